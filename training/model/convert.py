"""The trained adapters in IP-Adapter's file layout, which diffusers' `load_ip_adapter` reads.

Training keeps both branches inside diffusers modules; checkpoints are written the way
IP-Adapter and InstantID ship theirs, so InstantID's face branch loads into ours and ours loads
into any SDXL pipeline with `load_ip_adapter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from training.model.architecture import adapter_processors, resamplers
from training.model.config import ADAPTER_FILES, BRANCHES

# diffusers' resampler block names → the original IP-Adapter / InstantID `Resampler` names
# (layers.<i>.0 is PerceiverAttention, layers.<i>.1 the FeedForward Sequential). The original
# fuses to_k and to_v into one `to_kv`, keys first.
_RESAMPLER_NAMES = {
    "ln0": "0.norm1",
    "ln1": "0.norm2",
    "attn.to_q": "0.to_q",
    "attn.to_out.0": "0.to_out",
    "ff.0": "1.0",
    "ff.1.net.0.proj": "1.1",
    "ff.1.net.2": "1.3",
}
_RESAMPLER_NAMES_BACK = {original: ours for ours, original in _RESAMPLER_NAMES.items()}


def resampler_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `IPAdapterPlusImageProjection` state dict in IP-Adapter's `Resampler` names."""
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        prefix, param = key.rsplit(".", 1)
        _, block, module = prefix.split(".", 2)
        if module == "attn.to_k":
            to_v = state[f"layers.{block}.attn.to_v.{param}"]
            out[f"layers.{block}.0.to_kv.{param}"] = torch.cat([value, to_v])
        elif module != "attn.to_v":
            out[f"layers.{block}.{_RESAMPLER_NAMES[module]}.{param}"] = value
    return out


def resampler_from_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `resampler_to_original` (what `load_ip_adapter` does on reading)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        prefix, param = key.rsplit(".", 1)
        _, block, module = prefix.split(".", 2)
        if module == "0.to_kv":
            to_k, to_v = value.chunk(2, dim=0)
            out[f"layers.{block}.attn.to_k.{param}"] = to_k
            out[f"layers.{block}.attn.to_v.{param}"] = to_v
        elif module in _RESAMPLER_NAMES_BACK:
            out[f"layers.{block}.{_RESAMPLER_NAMES_BACK[module]}.{param}"] = value
        else:
            raise KeyError(f"unexpected resampler weight {key}")
    return out


def adapter_state_dict(unet: UNet2DConditionModel, branch: str) -> dict[str, dict[str, Any]]:
    """One branch as `{"image_proj": …, "ip_adapter": {"1.to_k_ip.weight", …}}`.

    This is the layout of IP-Adapter / InstantID checkpoints and what `load_ip_adapter` reads:
    `ip_adapter` keys count cross-attention layers as 1, 3, 5, … in `attn_processors` order.
    """
    index = BRANCHES.index(branch)
    ip_adapter = {}
    for layer, processor in enumerate(adapter_processors(unet)):
        key = 2 * layer + 1
        ip_adapter[f"{key}.to_k_ip.weight"] = processor.to_k_ip[index].weight.detach()
        ip_adapter[f"{key}.to_v_ip.weight"] = processor.to_v_ip[index].weight.detach()
    image_proj = resampler_to_original(resamplers(unet)[branch].state_dict())
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def load_adapter_state_dict(
    unet: UNet2DConditionModel, branch: str, state: dict[str, dict[str, torch.Tensor]]
) -> None:
    """Load one branch from IP-Adapter layout; every key must match, none may be left over."""
    index = BRANCHES.index(branch)
    processors = adapter_processors(unet)
    expected = {
        f"{2 * layer + 1}.{name}.weight"
        for layer in range(len(processors))
        for name in ("to_k_ip", "to_v_ip")
    }
    found = set(state["ip_adapter"])
    if found != expected:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise KeyError(
            f"{branch} adapter keys do not match the U-Net's {len(processors)} cross-attention "
            f"layers: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    with torch.no_grad():
        for layer, processor in enumerate(processors):
            key = 2 * layer + 1
            processor.to_k_ip[index].weight.copy_(state["ip_adapter"][f"{key}.to_k_ip.weight"])
            processor.to_v_ip[index].weight.copy_(state["ip_adapter"][f"{key}.to_v_ip.weight"])
    resamplers(unet)[branch].load_state_dict(resampler_from_original(state["image_proj"]))


def save_adapters(unet: UNet2DConditionModel, directory: str | Path) -> list[Path]:
    """Write `ip-adapter-face.safetensors` and `ip-adapter-body.safetensors`.

    Flat safetensors with `image_proj.` / `ip_adapter.` prefixes, which
    `pipeline.load_ip_adapter(directory, subfolder="", weight_name=[face, body],
    image_encoder_folder=None)` reads as two IP-Adapters in branch order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for branch in BRANCHES:
        state = adapter_state_dict(unet, branch)
        flat = {
            f"{group}.{key}": value.contiguous().clone()
            for group, values in state.items()
            for key, value in values.items()
        }
        path = directory / ADAPTER_FILES[branch]
        tmp = path.with_suffix(".tmp")
        save_file(flat, tmp)
        tmp.replace(path)
        paths.append(path)
    return paths


def load_adapters(unet: UNet2DConditionModel, directory: str | Path) -> None:
    """Load both branches written by `save_adapters` into an adapted U-Net."""
    for branch in BRANCHES:
        flat = load_file(Path(directory) / ADAPTER_FILES[branch])
        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            group, name = key.split(".", 1)
            state[group][name] = value
        load_adapter_state_dict(unet, branch, state)
