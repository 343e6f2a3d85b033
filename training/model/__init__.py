"""The identity-consistent inpainting model, one module per concern.

- `config`: sizes and file names (`SDXL`, `TINY`, `CONFIGS`, `ModelConfig`).
- `architecture`: building the model, the trainable set, the denoiser and `summary`.
- `convert`: the adapters to and from IP-Adapter's file layout (`load_ip_adapter`'s).
- `loading`: checkpoints and the pretrained weights in the models directory.

Everything public is re-exported here, so `from training.model import X` works for any of them.
A name's module is imported when the name is first used (PEP 562), so the file names, sizes
and checkpoint record of `config` come without diffusers (ten seconds of imports): `cameo
serve` checks a version's files, and `cameo model promote` moves an alias, without loading
anything heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# For type checkers; at run time `__getattr__` imports a name's module when it is first used.
if TYPE_CHECKING:
    from training.model.architecture import (
        adapter_processors,
        attach_adapters,
        build_components,
        build_controlnet,
        parameter_groups,
        predict_noise,
        resamplers,
        set_adapter_scales,
        set_trainable,
        summary,
        trainable_parameters,
    )
    from training.model.config import (
        ADAPTER_FILES,
        BODY_ENCODER_DIR,
        BRANCHES,
        CHECKPOINT_INFO,
        CONFIGS,
        CONTROLNET_DIR,
        FACE_EMBED_DIM,
        INSTANTID_ADAPTER,
        INSTANTID_CONTROLNET,
        INSTANTID_DIR,
        LATENT_CHANNELS,
        SCHEDULER,
        SDXL,
        SDXL_INPAINT_DIR,
        TINY,
        CheckpointInfo,
        ModelConfig,
        ResamplerConfig,
    )
    from training.model.convert import (
        adapter_state_dict,
        load_adapter_state_dict,
        load_adapters,
        resampler_from_original,
        resampler_to_original,
        save_adapters,
    )
    from training.model.loading import (
        base_components,
        components_from_checkpoint,
        load_body_encoder,
        load_checkpoint,
        load_components,
        load_controlnet_weights,
        load_instantid,
        save_checkpoint,
    )

__all__ = [
    "ADAPTER_FILES",
    "BODY_ENCODER_DIR",
    "BRANCHES",
    "CHECKPOINT_INFO",
    "CONFIGS",
    "CONTROLNET_DIR",
    "FACE_EMBED_DIM",
    "INSTANTID_ADAPTER",
    "INSTANTID_CONTROLNET",
    "INSTANTID_DIR",
    "LATENT_CHANNELS",
    "SCHEDULER",
    "SDXL",
    "SDXL_INPAINT_DIR",
    "TINY",
    "CheckpointInfo",
    "ModelConfig",
    "ResamplerConfig",
    "adapter_processors",
    "adapter_state_dict",
    "attach_adapters",
    "base_components",
    "build_components",
    "build_controlnet",
    "components_from_checkpoint",
    "load_adapter_state_dict",
    "load_adapters",
    "load_body_encoder",
    "load_checkpoint",
    "load_components",
    "load_controlnet_weights",
    "load_instantid",
    "parameter_groups",
    "predict_noise",
    "resampler_from_original",
    "resampler_to_original",
    "resamplers",
    "save_adapters",
    "save_checkpoint",
    "set_adapter_scales",
    "set_trainable",
    "summary",
    "trainable_parameters",
]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from training.model import config  # first: it imports no torch

    if hasattr(config, name):
        module = config
    else:
        from training.model import architecture, convert, loading

        module = next(m for m in (architecture, convert, loading) if hasattr(m, name))
    globals()[name] = value = getattr(module, name)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
