"""Which ComfyUI models folder a download goes to: one answer for the CLI and the Download node.

Order (the first that applies wins):

1. an explicit models folder (the CLI's ``--models-dir``), resolved against the current directory;
2. the folders a running ComfyUI registered (the Download node passes ``folder_paths``' own list);
3. the ComfyUI this pack is installed in (``<ComfyUI>/custom_nodes/<pack>/``), with that ComfyUI's
   ``extra_model_paths.yaml`` applied the way ComfyUI applies it at startup;
4. ``$COMFYUI_PATH``;
5. ``~/comfy/ComfyUI`` (comfy-cli's default install).

Only the ``bonsai`` folder is written (snapshots and the canonical file). ComfyUI registers
``models/bonsai`` from this pack after it read ``extra_model_paths.yaml``, so a ``bonsai:`` entry
there comes first (entries marked ``is_default`` before the others), exactly as ComfyUI lists them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..escape import escaping_logger

log = escaping_logger(__name__)

BONSAI_FOLDER = "bonsai"
PACK_DIR = Path(os.path.abspath(__file__)).parents[2]  # <pack>/bonsai_core/download/; not resolved: a symlinked pack still sits in custom_nodes/
HOME_COMFYUI = "~/comfy/ComfyUI"


class ModelsDirError(RuntimeError):
    """No models folder could be found or the one given is unusable; the message lists what was tried."""


@dataclass(frozen=True)
class ModelsLocation:
    """Where downloads go: ``bonsai_dir`` (a snapshot lands in ``bonsai_dir/<repo-name>/``)."""

    models_dir: Path
    bonsai_dir: Path
    source: str  # how it was chosen, for the "writing to ..." line
    comfyui: Path | None = None
    extra_config: Path | None = None  # the extra_model_paths.yaml that chose bonsai_dir, if any
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        via = f" (bonsai folder from {self.extra_config})" if self.extra_config else ""
        return f"{self.bonsai_dir} - {self.source}{via}"


def looks_like_comfyui(root: Path) -> bool:
    """A ComfyUI install: its ``main.py`` (git/portable) or a ``models/`` beside ``custom_nodes/`` (desktop)."""
    return (root / "main.py").is_file() or ((root / "models").is_dir() and (root / "custom_nodes").is_dir())


def containing_comfyui(pack_dir: Path = PACK_DIR) -> Path | None:
    """``<ComfyUI>`` when the pack folder is ``<ComfyUI>/custom_nodes/<pack>`` (also through a link)."""
    pack_dir = Path(os.path.abspath(pack_dir))
    if pack_dir.parent.name == "custom_nodes" and looks_like_comfyui(pack_dir.parent.parent):
        return pack_dir.parent.parent
    return None


def extra_bonsai_folders(config: Path) -> list[tuple[str, bool]]:
    """``(folder, is_default)`` for every ``bonsai`` entry of an ``extra_model_paths.yaml``, with
    ComfyUI's rules: ``base_path`` (``~`` and ``$VARS`` expanded, relative to the file), one folder
    per line, relative folders relative to ``base_path`` or else to the file's folder."""
    try:
        import yaml
    except ImportError:
        log.warning("%s: PyYAML is not installed, so its folders are ignored (ComfyUI itself needs PyYAML)", config)
        return []
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelsDirError(f"{config}: cannot read it ({type(e).__name__}: {e}); fix it or pass --models-dir") from e
    here = os.path.dirname(os.path.abspath(config))  # as ComfyUI: not resolved
    out: list[tuple[str, bool]] = []
    for section in (data or {}).values() if isinstance(data, dict) else ():
        if not isinstance(section, dict):
            continue
        base = section.get("base_path")
        if isinstance(base, str):
            base = os.path.expandvars(os.path.expanduser(base))
            base = base if os.path.isabs(base) else os.path.join(here, base)
        is_default = bool(section.get("is_default", False))
        value = section.get(BONSAI_FOLDER)
        if not isinstance(value, str):
            continue
        for line in value.split("\n"):
            line = line.strip()
            if line:
                full = os.path.join(base, line) if isinstance(base, str) else os.path.join(here, line)
                out.append((os.path.normpath(full), is_default))
    return out


def bonsai_folders_of(comfyui: Path) -> tuple[list[str], Path | None]:
    """The ``bonsai`` folders the ComfyUI at ``comfyui`` lists, in its order, and the yaml used."""
    config = comfyui / "extra_model_paths.yaml"
    paths: list[str] = []
    used = None
    if config.is_file():
        # ComfyUI's add_model_folder_path: a default entry goes first, the others are appended.
        for folder, is_default in extra_bonsai_folders(config):
            if folder in paths:
                if is_default:
                    paths.remove(folder)
                    paths.insert(0, folder)
            elif is_default:
                paths.insert(0, folder)
            else:
                paths.append(folder)
        used = config if paths else None
    own = str(comfyui / "models" / BONSAI_FOLDER)
    if own not in paths:
        paths.append(own)  # what this pack registers when ComfyUI loads it
    return paths, used


def _from_comfyui(root: Path, source: str) -> ModelsLocation:
    folders, used = bonsai_folders_of(root)
    return ModelsLocation(root / "models", Path(folders[0]), source, comfyui=root, extra_config=used if used else None)


def resolve_models_location(
    models_dir: str | os.PathLike[str] | None = None,
    *,
    registered: Sequence[str] | None = None,
    comfy_models_dir: str | os.PathLike[str] | None = None,
    pack_dir: Path = PACK_DIR,
    environ: Mapping[str, str] | None = None,
) -> ModelsLocation:
    """Where a download goes (see the module docstring for the order).

    ``registered``/``comfy_models_dir``: a running ComfyUI's ``folder_paths.get_folder_paths("bonsai")``
    and ``folder_paths.models_dir``. Raises :class:`ModelsDirError` when nothing applies.
    """
    env = os.environ if environ is None else environ
    if models_dir is not None and str(models_dir) != "":
        models = Path(os.path.abspath(os.path.expanduser(os.fspath(models_dir))))
        if models.exists() and not models.is_dir():
            raise ModelsDirError(f"--models-dir {models} exists and is not a folder")
        return ModelsLocation(models, models / BONSAI_FOLDER, "the --models-dir given")
    if registered:
        first = Path(registered[0])
        models = Path(comfy_models_dir) if comfy_models_dir else first.parent
        return ModelsLocation(models, first, "the bonsai folder of the running ComfyUI")
    tried: list[str] = []
    root = containing_comfyui(pack_dir)
    if root is not None:
        return _from_comfyui(root, f"the ComfyUI this pack is installed in ({root})")
    tried.append(f"the pack's parent folders ({Path(os.path.abspath(pack_dir)).parent} is not a ComfyUI custom_nodes folder)")
    env_path = env.get("COMFYUI_PATH")
    if env_path:
        root = Path(os.path.abspath(os.path.expanduser(env_path)))
        if looks_like_comfyui(root):
            return _from_comfyui(root, f"$COMFYUI_PATH ({root})")
        tried.append(f"$COMFYUI_PATH={env_path} (no main.py or models/ there)")
    else:
        tried.append("$COMFYUI_PATH (not set)")
    home = Path(os.path.expanduser(HOME_COMFYUI))
    if looks_like_comfyui(home):
        return _from_comfyui(home, f"{HOME_COMFYUI} ({home})")
    tried.append(f"{home} (absent)")
    raise ModelsDirError(
        "cannot tell which ComfyUI to download into: tried " + "; ".join(tried) + ". Run this command as "
        "`python <ComfyUI>/custom_nodes/<pack>/bonsai.py ...`, set COMFYUI_PATH, or pass --models-dir <ComfyUI>/models"
    )
