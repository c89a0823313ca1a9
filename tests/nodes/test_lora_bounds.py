"""Every adapter kind on a packed layer costs memory of its own parameters and the layer's shape.

Equality: for each kind, the branches ``branches_from_patches`` builds, applied after ``W x``, equal
``comfy.lora.calculate_weight`` (stock ComfyUI's merge) applied to the same dense ``W``: both the
low-rank form and the dense-delta form (chosen by size) and slices of fused layers.
Bomb: a LoHa of ranks 512 x 512 on a 3072 x 3072 layer (24 MiB of factors) has a rank-262144
Khatri-Rao branch (6 GiB); under an address-space cap of 1 GiB above the interpreter's baseline it
must be applied as the 36 MiB dense delta instead (before: MemoryError).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
KEY = "layer.weight"
N, K = 48, 64


def _lowrank(g: torch.Generator, n: int, k: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, r, generator=g) * 0.3, torch.randn(r, k, generator=g) * 0.3


def adapter_tensors(kind: str, n: int = N, k: int = K, seed: int = 0) -> dict[str, torch.Tensor]:
    """One adapter on the module ``layer`` in the tensor names ComfyUI's loader reads."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    if kind == "lora":
        t["layer.lora_up.weight"], t["layer.lora_down.weight"] = _lowrank(g, n, k, 4)
    elif kind in ("loha_small", "loha_large"):
        r = 2 if kind == "loha_small" else 12  # 4*(48+64) < 48*64 ; 144*(48+64) > 48*64
        for i in (1, 2):
            t[f"layer.hada_w{i}_a"], t[f"layer.hada_w{i}_b"] = _lowrank(g, n, k, r)
    elif kind == "lokr_full_lowrank":
        t["layer.lokr_w1"] = torch.randn(4, 4, generator=g)
        t["layer.lokr_w2_a"], t["layer.lokr_w2_b"] = _lowrank(g, n // 4, k // 4, 2)
    elif kind == "lokr_lowrank_lowrank":
        t["layer.lokr_w1_a"], t["layer.lokr_w1_b"] = _lowrank(g, 2, 8, 1)
        t["layer.lokr_w2_a"], t["layer.lokr_w2_b"] = _lowrank(g, n // 2, k // 8, 3)
    elif kind == "lokr_full_full":
        t["layer.lokr_w1"] = torch.randn(8, 8, generator=g)
        t["layer.lokr_w2"] = torch.randn(n // 8, k // 8, generator=g)
    elif kind == "lokr_large_rank":
        t["layer.lokr_w1"] = torch.randn(2, 2, generator=g)
        t["layer.lokr_w2_a"], t["layer.lokr_w2_b"] = _lowrank(g, n // 2, k // 2, 40)
    elif kind == "lokr_reshaped":  # kron is [96, 32], ComfyUI reshapes it to [48, 64]
        t["layer.lokr_w1"] = torch.randn(4, 2, generator=g)
        t["layer.lokr_w2"] = torch.randn(24, 16, generator=g)
    elif kind == "diff":
        t["layer.diff"] = torch.randn(n, k, generator=g) * 0.1
    else:
        raise ValueError(kind)
    if not kind.startswith("diff"):
        t["layer.alpha"] = torch.tensor(3.0)
    return t


KINDS = ["lora", "loha_small", "loha_large", "lokr_full_lowrank", "lokr_lowrank_lowrank", "lokr_full_full", "lokr_large_rank", "lokr_reshaped", "diff"]


def stock_patches(tensors: dict[str, torch.Tensor], strength: float, offset=None, strength_model: float = 1.0) -> list[tuple]:
    import comfy.lora

    loaded = comfy.lora.load_lora(tensors, {"layer": KEY})
    assert KEY in loaded, "ComfyUI did not read the adapter"
    return [(strength, loaded[KEY], strength_model, offset, None)]


def run_ours(lora_mod, lowrank, patches: list[tuple], w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    branches = lora_mod.branches_from_patches(KEY, patches, w.shape[0], w.shape[1])
    return lowrank.apply_low_rank(x, x @ w.T, branches), branches


@pytest.fixture(scope="module")
def lowrank(comfyui):
    return comfyui.pack("bonsai_core.lowrank")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("offset", [None, (0, 16, N)], ids=["whole", "slice"])
def test_each_kind_equals_stock_merge(kind, offset, lora_mod, lowrank):
    g = torch.Generator().manual_seed(1)
    rows = N if offset is None else N + 32
    w = torch.randn(rows, K, generator=g)
    x = torch.randn(5, K, generator=g)
    patches = stock_patches(adapter_tensors(kind), 0.7, offset)
    import comfy.lora

    want = x @ comfy.lora.calculate_weight(patches, w.clone(), KEY).T
    got, branches = run_ours(lora_mod, lowrank, patches, w, x)
    assert (want - x @ w.T).abs().mean() > 1e-2, "the adapter must change the output"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    held = sum(b.up.numel() + b.down.numel() for b in branches)
    own = sum(t.numel() for t in adapter_tensors(kind).values())
    # memory: the adapter's own numbers, or one dense slice (plus its identity side), never more
    assert held <= max(own + N * K, 2 * N * K), (kind, held)


@pytest.mark.parametrize("kind", ["lora", "loha_small", "lokr_full_lowrank"])
def test_dora_refused_with_one_line(kind, lora_mod):
    tensors = adapter_tensors(kind)
    tensors["layer.dora_scale"] = torch.ones(N, 1)
    with pytest.raises(lora_mod.BonsaiLoraError, match="DoRA") as err:
        lora_mod.branches_from_patches(KEY, stock_patches(tensors, 1.0), N, K)
    assert "\n" not in str(err.value)


def test_lokr_with_factors_that_do_not_fit_builds_nothing(lora_mod, caplog):
    # kron([4096, 1], [1, 4096]) would be 16M numbers before ComfyUI's reshape fails; refused from the shapes
    tensors = {"layer.lokr_w1": torch.ones(4096, 1), "layer.lokr_w2": torch.ones(1, 4096)}
    assert lora_mod.branches_from_patches(KEY, stock_patches(tensors, 1.0), N, K) == []
    assert "do not fit" in caplog.text


BOMB = textwrap.dedent(
    """
    import importlib, re, resource, sys, types
    from pathlib import Path
    comfy_root, repo = sys.argv[1], sys.argv[2]
    sys.path.insert(0, comfy_root)
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_management, comfy.weight_adapter as wa
    import torch
    pkg = types.ModuleType("bonsai_pack"); pkg.__path__ = [repo]; sys.modules["bonsai_pack"] = pkg
    lora = importlib.import_module("bonsai_pack.nodes.lora")
    n, r = 3072, 512
    g = torch.Generator().manual_seed(0)
    w1a, w1b, w2a, w2b = (torch.randn(*s, generator=g) * 0.05 for s in ((n, r), (r, n), (n, r), (r, n)))
    loha = wa.LoHaAdapter(set(), (w1a, w1b, 4.0, w2a, w2b, None, None, None))
    size = int(re.search(r"VmSize:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    cap = size + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    branches = lora.branches_from_patches("layer.weight", [(1.0, loha, 1.0, None, None)], n, n)
    held = sum(b.up.numel() + b.down.numel() for b in branches)
    print("HELD", held)
    """
)


def test_loha_bomb_fits_in_its_layer_under_a_memory_cap(comfyui):
    proc = subprocess.run(
        [sys.executable, "-c", BOMB, str(comfyui.root), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = int(proc.stdout.split("HELD")[-1])
    assert held <= 2 * 3072 * 3072, held  # the dense delta and its identity side, not 2 x 3072 x 262144
