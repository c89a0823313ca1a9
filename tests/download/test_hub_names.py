"""Remote file names: what the pack accepts from the Hub before a name becomes a local path, and
which files each release downloads. The safety check is the pack's own (never huggingface_hub's)."""

from __future__ import annotations

import ntpath
import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonsai_core.download.hub_names import (
    MANIFEST,
    UnsafeRemoteName,
    check_remote_name,
    expected_for,
    needed_description,
    resolve_release,
    select_files,
)

REPO = "prism-ml/bonsai-image-ternary-4B-gemlite-2bit"

HOSTILE = [
    "../evil.json",  # climbs out of the snapshot folder
    "../../../../etc/cron.d/x.json",
    "vae/../../escape.json",
    "vae/./config.json",
    "./model_index.json",
    "/etc/passwd",  # absolute
    "/tmp/x.json",
    "C:/Windows/x.json",  # drive
    "c:x.json",  # drive-relative
    "//server/share/x.json",  # UNC, POSIX spelling
    "\\\\server\\share\\x.json",  # UNC
    "vae\\..\\..\\x.json",  # backslashes
    "vae\\config.json",
    "vae//config.json",  # empty part
    ".. /escape.json",  # Windows strips the trailing space: a parent folder
    "vae/.../x.json",
    "vae/. /x.json",
    "vae/",  # trailing slash: a folder, not a file
    "",
    "x\x00.json",  # NUL
    "vae/con\nfig.json",  # control character
    "vae/\u202econfig.json",  # bidi override
    "vae/config.json:stream",  # NTFS alternate data stream
    "vae/" + "a" * 200 + ".json",  # one part too long
    "/".join(["d"] * 6) + "/x.json",  # too deep
    "a/" * 120 + "x.json",  # too long overall
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_with_the_repo_named(name: str) -> None:
    with pytest.raises(UnsafeRemoteName) as e:
        check_remote_name(name, REPO)
    msg = str(e.value)
    assert msg.startswith(REPO) and "unsafe file name" in msg and "nothing was downloaded" in msg
    assert "\x00" not in msg and "\n" not in msg  # the name is shown escaped


# Safe to join to a folder, but never a file a release needs: listed without refusing the repo
# (every Hub repo lists .gitattributes), and never downloaded.
NEVER_WRITTEN = [
    ".gitattributes",
    ".cache/huggingface/download/vae/config.json.metadata",  # huggingface_hub's own records
    MANIFEST,  # the downloader's own record
    ".hidden.json",
    "vae/.hidden",
    "vae/ｃonfig.json",  # full-width look-alike
    "vae/config.json ",  # trailing space (Windows drops it)
    "vae/config.json.",  # trailing dot (Windows drops it)
    "vae/CON",  # Windows device names
    "vae/aux.json",
    "vae/$config.json",
]


@pytest.mark.parametrize("name", NEVER_WRITTEN)
def test_odd_but_contained_names_are_never_selected(name: str) -> None:
    assert check_remote_name(name, REPO) == name
    assert not expected_for(name, "gemlite") and not expected_for(name, "mlx") and not expected_for(name, "unpacked")
    assert select_files([name, "vae/config.json"], "gemlite", repo_id=REPO) == ["vae/config.json"]


@pytest.mark.parametrize("name", [None, 3, b"vae/config.json", ["vae", "config.json"]])
def test_non_string_names_are_refused(name: object) -> None:
    with pytest.raises(UnsafeRemoteName, match="not a string"):
        check_remote_name(name, REPO)


RELEASED = [
    "README.md",
    "manifest.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "transformer-gemlite-int2/state_dict.pt",
    "transformer-gemlite-int1/gemlite_autotune.json",
    "text_encoder-hqq-4bit/tokenizer/tokenizer_config.json",
    "tokenizer/chat_template.jinja",
    "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder-mlx-4bit/model.safetensors.index.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@pytest.mark.parametrize("name", RELEASED)
def test_released_names_pass(name: str) -> None:
    assert check_remote_name(name, REPO) == name


def test_selection_is_a_whitelist_per_release() -> None:
    listing = [
        *RELEASED,
        "assets/banner.png",
        "extra/payload.bin",  # safe but unknown: never downloaded
        "notes/deep.json",  # *.json only at the top level
        ".gitattributes",
        "transformer-packed-mflux/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    gem = select_files(listing, "gemlite", repo_id=REPO)
    assert "extra/payload.bin" not in gem and "notes/deep.json" not in gem and ".gitattributes" not in gem
    assert not any(n.startswith(("assets/", "transformer/", "transformer-packed-mflux/", "tokenizer/", "text_encoder/")) for n in gem)
    assert {"transformer-gemlite-int2/state_dict.pt", "vae/diffusion_pytorch_model.safetensors", "README.md"} <= set(gem)
    mlx_te = select_files(listing, "mlx", ("text_encoder",), repo_id=REPO)
    assert mlx_te == sorted(
        [
            "README.md",
            "manifest.json",
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder-mlx-4bit/model.safetensors.index.json",
            "tokenizer/chat_template.jinja",
        ]
    )
    assert not expected_for(MANIFEST, "gemlite")


def test_one_hostile_name_refuses_the_whole_listing() -> None:
    with pytest.raises(UnsafeRemoteName, match=r"\.\./model_index\.json"):
        select_files([*RELEASED, "../model_index.json"], "gemlite", repo_id=REPO)


def test_auto_is_gemlite_and_manual_steps_name_the_folders() -> None:
    assert resolve_release("auto") == "gemlite"
    with pytest.raises(ValueError, match="release must be one of"):
        resolve_release("cuda")
    text = needed_description("gemlite", ("transformer", "text_encoder"), "binary")
    assert "transformer-gemlite-int1/" in text and "text_encoder-hqq-4bit/" in text and "vae/" not in text


_TOKENS = ["a", "b.json", ".", "..", "/", "//", "\\", ":", "C:", " ", "\x00", "\n", "~", "con", "-", "_", "\u202e", "\uff43"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join))
def test_every_accepted_name_stays_inside_the_folder(name: str) -> None:
    """Property: whatever passes the check joins to a path strictly inside the base folder, under
    POSIX and Windows path rules alike."""
    try:
        check_remote_name(name, REPO)
    except UnsafeRemoteName:
        return
    base = "/models/bonsai/snap"
    assert posixpath.normpath(posixpath.join(base, name)).startswith(base + "/")
    wbase = "C:\\models\\bonsai\\snap"
    assert ntpath.normpath(ntpath.join(wbase, name)).startswith(wbase + "\\")
