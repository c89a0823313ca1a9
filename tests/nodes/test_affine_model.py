"""A binary gemlite pack and a binary MLX pack whose scale/zero pairs break the exact Bonsai relation
in 1 % of groups (one ulp), with scale-0 and subnormal-scale groups, load through BonsaiModelLoader
into a stock ComfyUI MODEL whose packed layers compute exactly ``x @ (q * scale + zero).T``.
(Before the general affine path both packs were refused at load.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.comfyui

# the layers checked: one fused (q, k, v) and one plain diffusers linear of the tiny geometry
CHECKED = {"double_blocks.0.img_attn.qkv": ["to_q", "to_k", "to_v"], "single_blocks.0.linear2": None}


def _break(scales: torch.Tensor, zeros: torch.Tensor, gen: torch.Generator) -> None:
    flat_s, flat_z = scales.view(-1), zeros.view(-1)
    n = flat_s.numel()
    pick = torch.randperm(n, generator=gen)[: max(1, n // 100) + 3]
    ints = torch.int32 if flat_s.dtype == torch.float32 else torch.int16
    flat_s[pick[:-3]] = (flat_s[pick[:-3]].view(ints) + 1).view(flat_s.dtype)  # one ulp
    flat_s[pick[-3]], flat_z[pick[-3]] = 0.0, -0.0
    flat_s[pick[-2]] = 0.0
    flat_s[pick[-1]] = 1e-40 if flat_s.dtype == torch.float32 else 2.0**-133  # subnormal


def _file_weight(codes: np.ndarray, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``q * scale + zero`` (fp32) from uint8 codes ``[N, K/8]`` (LSB-first) and ``[N, K/128]`` pairs."""
    q = ((codes[..., None] >> np.arange(8, dtype=np.uint8)) & 1).reshape(codes.shape[0], -1).astype(np.float32)
    return torch.from_numpy(q) * scale.float().repeat_interleave(128, 1) + zero.float().repeat_interleave(128, 1)


def _gemlite_pack(comfyui, folder) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    comfyui.pack("bonsai_tools.synth").make_fixture("binary", "tiny", "gemlite", 5, folder)
    path = folder / "transformer-gemlite-int1" / "state_dict.pt"
    sd = {k: v.clone() for k, v in torch.load(path, weights_only=True).items()}
    gen = torch.Generator().manual_seed(1)
    for key in [k for k in sd if k.endswith(".scales")]:
        _break(sd[key], sd[key[: -len("scales")] + "zeros"], gen)
    torch.save(sd, path)
    return {
        k[: -len(".W_q")]: _file_weight(v.t().contiguous().numpy(), sd[k[:-3] + "scales"].t(), sd[k[:-3] + "zeros"].t())
        for k, v in sd.items()
        if k.endswith(".W_q")
    }


def _mlx_pack(comfyui, folder) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    comfyui.pack("bonsai_tools.synth").make_fixture("binary", "tiny", "mlx", 6, folder)
    path = folder / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"
    t = load_file(str(path))
    gen = torch.Generator().manual_seed(2)
    for key in [k for k in t if k.endswith(".scales")]:
        _break(t[key], t[key[: -len("scales")] + "biases"], gen)
    save_file(t, str(path), metadata={"format": "mlx"})
    return {
        k[: -len(".weight")]: _file_weight(v.view(torch.uint8).numpy(), t[k[:-6] + "scales"], t[k[:-6] + "biases"])
        for k, v in t.items()
        if k.endswith(".weight") and k[: -len(".weight")] + ".scales" in t
    }


def _diffusers_names(bfl: str, parts: list[str] | None) -> list[str]:
    if bfl.startswith("double_blocks.0"):
        return [f"transformer_blocks.0.attn.{p}" for p in parts or []]
    return ["single_transformer_blocks.0.attn.to_out"]


@pytest.mark.parametrize("fmt", ["gemlite", "mlx"])
def test_affine_pack_loads_into_the_model_exactly(comfyui, fmt):
    loader = comfyui.pack("nodes.model_loader")
    ops = comfyui.pack("nodes.ops")
    folder = comfyui.models_dir / "bonsai" / f"tiny-binary-{fmt}-affine"
    expected = (_gemlite_pack if fmt == "gemlite" else _mlx_pack)(comfyui, folder)
    dm = loader.load_bonsai_model(folder, backend="torch", compute_dtype="fp32").model.diffusion_model
    layers = dict(ops.bonsai_linears(dm))
    assert all(m.zeros is not None for m in layers.values() if m.is_packed)  # every layer has a broken group
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(3))
    for bfl, parts in CHECKED.items():
        layer = layers[bfl]
        w = torch.cat([expected[m] for m in _diffusers_names(bfl, parts)], 0)
        x_in = torch.randn(7, w.shape[1], generator=torch.Generator().manual_seed(4)) if w.shape[1] != 256 else x
        assert torch.equal(layer(x_in), torch.nn.functional.linear(x_in, w)), bfl
        # the weight ComfyUI's generic code sees dequantizes through the same formula, zeros included
        view = layer.weight
        assert torch.equal(view.dequantize().float(), w), bfl
        assert torch.equal(torch.nn.functional.linear(x_in, view), torch.nn.functional.linear(x_in, w)), bfl
        assert torch.equal(view.clone().dequantize().float(), w), bfl
        sd = dm.state_dict()
        assert f"{bfl}.weight_zero" in sd and sd[f"{bfl}.weight_zero"].shape == sd[f"{bfl}.weight_scale"].shape
