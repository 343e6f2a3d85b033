"""The model: sizes, trainable set, gradients, adapter and InstantID checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLInpaintPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from tiny_scene import plain_unet, randomize_controlnet_outputs, sdxl_inpaint_pipeline

from training.model import (
    ADAPTER_FILES,
    BODY_ENCODER_DIR,
    BRANCHES,
    INSTANTID_ADAPTER,
    INSTANTID_CONTROLNET,
    INSTANTID_DIR,
    SDXL,
    SDXL_INPAINT_DIR,
    TINY,
    adapter_processors,
    adapter_state_dict,
    build_components,
    load_adapters,
    load_checkpoint,
    load_components,
    load_instantid,
    predict_noise,
    resamplers,
    save_adapters,
    save_checkpoint,
    summary,
    trainable_parameters,
)

# ---------------------------------------------------------------------------------------------
# Sizes


def test_sdxl_summary_matches_the_design_counts():
    report = summary(SDXL)
    counts = report["parameters"]
    assert report["cross_attention_layers"] == 70
    assert counts["unet"] == 2_567_478_084
    assert round(counts["controlnet"] / 1e9, 3) == 1.251
    assert counts["face_kv"] == counts["body_kv"] == 340_787_200
    assert round(counts["face_resampler"] / 1e6, 1) == 82.0
    assert round(counts["body_resampler"] / 1e6, 1) == 82.6
    trainable = sum(
        counts[k] for k in ("controlnet", "face_resampler", "body_resampler", "face_kv", "body_kv")
    )
    assert report["trainable"] == trainable


def test_summary_of_tiny_is_json():
    # `cameo model summary` prints this report as JSON.
    report = json.loads(json.dumps(summary(TINY)))
    assert report["config"] == "tiny"
    assert report["trainable"] > 0


def test_controlnet_reads_the_4_latent_channels(tiny):
    unet, controlnet = tiny["unet"], tiny["controlnet"]
    assert unet.config.in_channels == 9
    assert controlnet.config.in_channels == 4
    assert torch.equal(controlnet.conv_in.weight, unet.conv_in.weight[:, :4])
    assert torch.equal(
        controlnet.down_blocks[1].attentions[0].proj_in.weight,
        unet.down_blocks[1].attentions[0].proj_in.weight,
    )


def test_branch_kv_start_from_the_text_kv(tiny):
    unet = tiny["unet"]
    layers = 0
    for name, processor in unet.attn_processors.items():
        if not isinstance(processor, IPAdapterAttnProcessor2_0):
            continue
        attn = unet.get_submodule(name.removesuffix(".processor"))
        for branch in range(len(BRANCHES)):
            assert torch.equal(processor.to_k_ip[branch].weight, attn.to_k.weight)
            assert torch.equal(processor.to_v_ip[branch].weight, attn.to_v.weight)
        layers += 1
    assert layers == summary(TINY)["cross_attention_layers"] > 0


# ---------------------------------------------------------------------------------------------
# Trainable set and gradients


def _expected_trainable(unet, controlnet) -> set[str]:
    names = {f"controlnet.{name}" for name, _ in controlnet.named_parameters()}
    for name, _ in unet.named_parameters():
        if name.startswith("encoder_hid_proj.") or ".processor.to_" in name:
            names.add(f"unet.{name}")
    return names


def _training_inputs(batch: int = 2, size: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "latents": randn(batch, 4, size, size),
        "timestep": torch.tensor([10, 500]),
        "mask": (randn(batch, 1, size, size) > 0).float(),
        "masked_image_latents": randn(batch, 4, size, size),
        "prompt_embeds": randn(batch, 154, TINY.unet["cross_attention_dim"]),
        "text_embeds": randn(batch, TINY.text_encoder_2["projection_dim"]),
        "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * batch),
        "face_embeds": randn(batch, 512),
        "body_features": randn(batch, 17, TINY.body_resampler.embed_dims),
        "pose_image": torch.rand(batch, 3, 8 * size, 8 * size, generator=generator),
    }


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_exactly_the_trainable_set(tiny, checkpointing):
    unet, controlnet = tiny["unet"], tiny["controlnet"]
    expected = _expected_trainable(unet, controlnet)
    assert set(trainable_parameters(unet, controlnet)) == expected
    if checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    unet.train()
    controlnet.train()
    noise_pred = predict_noise(unet, controlnet, **_training_inputs())
    noise_pred.square().mean().backward()
    with_grad = {
        f"{prefix}.{name}"
        for prefix, module in (("unet", unet), ("controlnet", controlnet))
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    assert with_grad == expected
    for module in (tiny["vae"], tiny["text_encoder"], tiny["text_encoder_2"], tiny["body_encoder"]):
        assert not any(param.requires_grad for param in module.parameters())


def test_trainable_count_matches_summary(tiny):
    trainable = trainable_parameters(tiny["unet"], tiny["controlnet"])
    assert sum(p.numel() for p in trainable.values()) == summary(TINY)["trainable"]


# ---------------------------------------------------------------------------------------------
# Adapter checkpoints: load_ip_adapter's layout


def _perturb_adapters(unet, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (unet.encoder_hid_proj, *adapter_processors(unet)):
            for param in module.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def _adapter_params(unet) -> dict[str, torch.Tensor]:
    return {
        name: param
        for name, param in unet.named_parameters()
        if name.startswith("encoder_hid_proj.") or ".processor.to_" in name
    }


def test_adapter_save_load_is_exact(tiny, tmp_path):
    unet = tiny["unet"]
    _perturb_adapters(unet, seed=1)
    paths = save_adapters(unet, tmp_path)
    assert [p.name for p in paths] == [ADAPTER_FILES[b] for b in BRANCHES]
    other = build_components(TINY, seed=5)["unet"]
    load_adapters(other, tmp_path)
    saved, loaded = _adapter_params(unet), _adapter_params(other)
    assert saved.keys() == loaded.keys()
    for name, value in saved.items():
        assert torch.equal(value, loaded[name]), name


def test_checkpoint_round_trip_includes_the_controlnet(tiny, tmp_path):
    randomize_controlnet_outputs(tiny["controlnet"])
    save_checkpoint(tiny["unet"], tiny["controlnet"], tmp_path)
    other = build_components(TINY, seed=5)
    load_checkpoint(other["unet"], other["controlnet"], tmp_path)
    loaded = other["controlnet"].state_dict()
    for name, value in tiny["controlnet"].state_dict().items():
        assert torch.equal(value, loaded[name]), name


def test_load_ip_adapter_reads_the_saved_files(tiny, tmp_path):
    unet, controlnet = tiny["unet"], tiny["controlnet"]
    _perturb_adapters(unet, seed=2)
    randomize_controlnet_outputs(controlnet)
    save_adapters(unet, tmp_path)

    pipe = sdxl_inpaint_pipeline(tiny, plain_unet(unet))
    pipe.load_ip_adapter(
        str(tmp_path),
        subfolder="",
        weight_name=[ADAPTER_FILES[b] for b in BRANCHES],
        image_encoder_folder=None,
    )
    assert pipe.unet.encoder_hid_proj.num_ip_adapters == len(BRANCHES)
    for name, value in _adapter_params(unet).items():
        assert torch.equal(value, dict(pipe.unet.named_parameters())[name]), name

    inputs = _training_inputs()
    with torch.no_grad():
        ours = predict_noise(unet, controlnet, **inputs)
        theirs = predict_noise(pipe.unet, controlnet, **inputs)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# InstantID's release format


class _PerceiverAttention(torch.nn.Module):
    """InstantID's / IP-Adapter's original resampler attention, the source of its key names."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.to_q = torch.nn.Linear(dim, inner, bias=False)
        self.to_kv = torch.nn.Linear(dim, inner * 2, bias=False)
        self.to_out = torch.nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        batch, length, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)

        def heads(t):
            return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (heads(q) * scale) @ (heads(k) * scale).transpose(-2, -1)
        out = torch.softmax(weight, dim=-1) @ heads(v)
        return self.to_out(out.permute(0, 2, 1, 3).reshape(batch, length, -1))


class _OriginalResampler(torch.nn.Module):
    def __init__(self, dim, depth, dim_head, heads, num_queries, embedding_dim, output_dim):
        super().__init__()
        self.latents = torch.nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = torch.nn.Linear(embedding_dim, dim)
        self.proj_out = torch.nn.Linear(dim, output_dim)
        self.norm_out = torch.nn.LayerNorm(output_dim)
        feed_forward = [
            torch.nn.Sequential(
                torch.nn.LayerNorm(dim),
                torch.nn.Linear(dim, dim * 4, bias=False),
                torch.nn.GELU(),
                torch.nn.Linear(dim * 4, dim, bias=False),
            )
            for _ in range(depth)
        ]
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleList([_PerceiverAttention(dim, dim_head, heads), ff])
            for ff in feed_forward
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def _write_instantid(directory, tiny, seed: int = 3):
    """InstantID's release layout: ip-adapter.bin (torch pickle) + ControlNetModel/."""
    torch.manual_seed(seed)
    c = TINY.face_resampler
    original = _OriginalResampler(
        c.hidden_dims, c.depth, c.dim_head, c.heads, c.num_queries, c.embed_dims, c.output_dims
    )
    ip_adapter = {}
    for layer, processor in enumerate(adapter_processors(tiny["unet"])):
        for name in ("to_k_ip", "to_v_ip"):
            shape = getattr(processor, name)[0].weight.shape
            ip_adapter[f"{2 * layer + 1}.{name}.weight"] = torch.randn(shape).half()
    directory.mkdir(parents=True)
    state = {"image_proj": original.half().state_dict(), "ip_adapter": ip_adapter}
    torch.save(state, directory / INSTANTID_ADAPTER)
    identitynet = ControlNetModel.from_config(tiny["controlnet"].config)
    randomize_controlnet_outputs(identitynet, seed=seed)
    identitynet.save_pretrained(directory / INSTANTID_CONTROLNET)
    return original.float(), state, identitynet


def test_instantid_checkpoints_load_strictly(tiny, tmp_path):
    original, state, identitynet = _write_instantid(tmp_path / INSTANTID_DIR, tiny)
    unet, controlnet = tiny["unet"], tiny["controlnet"]
    load_instantid(unet, controlnet, tmp_path / INSTANTID_DIR)

    for name, value in identitynet.state_dict().items():
        assert torch.equal(controlnet.state_dict()[name], value), name
    loaded = adapter_state_dict(unet, "face")
    for key, value in state["ip_adapter"].items():
        assert torch.equal(loaded["ip_adapter"][key], value.float()), key
    # The converted resampler computes what InstantID's own Resampler computes.
    face = torch.randn(3, 1, TINY.face_resampler.embed_dims)
    with torch.no_grad():
        torch.testing.assert_close(resamplers(unet)["face"](face), original(face))


def test_instantid_key_mismatches_are_errors(tiny, tmp_path):
    directory = tmp_path / INSTANTID_DIR
    _, state, _ = _write_instantid(directory, tiny)
    unet, controlnet = tiny["unet"], tiny["controlnet"]

    extra = {**state, "ip_adapter": {**state["ip_adapter"], "999.to_k_ip.weight": torch.zeros(1)}}
    torch.save(extra, directory / INSTANTID_ADAPTER)
    with pytest.raises(KeyError, match="unexpected"):
        load_instantid(unet, controlnet, directory)

    image_proj = dict(state["image_proj"])
    image_proj.pop("norm_out.bias")
    torch.save({**state, "image_proj": image_proj}, directory / INSTANTID_ADAPTER)
    with pytest.raises(RuntimeError, match=r"norm_out\.bias"):
        load_instantid(unet, controlnet, directory)

    torch.save(state, directory / INSTANTID_ADAPTER)
    nine_channels = ControlNetModel.from_config(controlnet.config, in_channels=9)
    nine_channels.save_pretrained(directory / INSTANTID_CONTROLNET)
    with pytest.raises(RuntimeError, match="conv_in"):
        load_instantid(unet, controlnet, directory)


# ---------------------------------------------------------------------------------------------
# The full loader, on tiny weights in the real on-disk formats


def test_load_components_from_a_models_dir(tiny, tmp_path):
    StableDiffusionXLInpaintPipeline(
        vae=tiny["vae"],
        text_encoder=tiny["text_encoder"],
        text_encoder_2=tiny["text_encoder_2"],
        tokenizer=tiny["tokenizer"],
        tokenizer_2=tiny["tokenizer_2"],
        unet=plain_unet(tiny["unet"]),
        scheduler=tiny["scheduler"],
    ).save_pretrained(tmp_path / SDXL_INPAINT_DIR)
    original, _, identitynet = _write_instantid(tmp_path / INSTANTID_DIR, tiny)
    tiny["body_encoder"].save_pretrained(tmp_path / BODY_ENCODER_DIR)
    tiny["body_processor"].save_pretrained(tmp_path / BODY_ENCODER_DIR)

    components = load_components(tmp_path, TINY)
    unet = components["unet"]
    assert unet.config.in_channels == 9
    assert torch.equal(unet.conv_in.weight, tiny["unet"].conv_in.weight)
    assert torch.equal(components["controlnet"].conv_in.weight, identitynet.conv_in.weight)
    face = torch.randn(2, 1, TINY.face_resampler.embed_dims)
    with torch.no_grad():
        torch.testing.assert_close(resamplers(unet)["face"](face), original(face))
    assert set(trainable_parameters(unet, components["controlnet"])) == _expected_trainable(
        unet, components["controlnet"]
    )
    ids = components["tokenizer_2"]("a man")["input_ids"]
    assert ids == tiny["tokenizer_2"]("a man")["input_ids"]
    pixels = components["body_processor"](images=torch.zeros(3, 40, 40), return_tensors="pt")
    features = components["body_encoder"](pixel_values=pixels["pixel_values"]).last_hidden_state
    assert features.shape[-1] == TINY.body_resampler.embed_dims

    save_checkpoint(unet, components["controlnet"], tmp_path / "run")
    reloaded = load_components(tmp_path, TINY, checkpoint=tmp_path / "run")
    for name, value in _adapter_params(unet).items():
        assert torch.equal(value, dict(reloaded["unet"].named_parameters())[name]), name
