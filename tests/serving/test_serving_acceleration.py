"""The served pipeline's speed levers (`serving.acceleration`): they travel with the logged
model, apply at load, and with `compile` the warm-up compiles before the server answers."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from perception.priors import Priors
from serving.model import RequestStop, build_pipeline
from serving.params import ServingParams
from serving.schema import ServingConfig
from serving.served import RequestCancelled, ServedRequest
from training.acceleration import REPEATED_BLOCKS
from training.model import FACE_EMBED_DIM
from training.params import Acceleration


def test_the_levers_travel_with_the_logged_model():
    section = ServingParams(acceleration={"compile": True}).model_dump(exclude_none=True)
    config = ServingConfig.from_params(section)
    assert config.acceleration == Acceleration(compile=True)
    assert ServingConfig.from_params(config.to_dict()) == config
    # A model logged before the levers existed runs without them.
    del section["acceleration"]
    assert ServingConfig.from_params(section).acceleration == Acceleration()


@pytest.mark.slow
def test_compile_warms_up_at_load_and_paints_the_same(checkpoint, scene, caplog):
    base, mask, reference, prompt = scene
    priors = Priors("tiny")
    eager = build_pipeline(checkpoint, priors, False, Acceleration())
    # aot_eager: what is tested here is the serving side (warm-up at load, the stop hooks
    # outside the compiled blocks); inductor's code for this pipeline is checked in
    # tests/training/test_acceleration.py (test_pipeline_levers_leave_the_painting_unchanged).
    levers = Acceleration(
        channels_last=True, attention_backend="math", compile=True, compile_backend="aot_eager"
    )
    with caplog.at_level(logging.INFO, logger="serving"):
        fast = build_pipeline(checkpoint, priors, False, levers)
    assert "compiled the denoiser in" in caplog.text
    blocks = [m for m in fast.unet.modules() if isinstance(m, REPEATED_BLOCKS)]
    assert all(block._compiled_call_impl is not None for block in blocks)
    arguments = {
        "image": base,
        "mask_image": mask,
        "prompt": prompt,
        "reference_image": reference,
        "face_embedding": np.ones(FACE_EMBED_DIM, dtype=np.float32),
        "pose_image": base,
        "num_inference_steps": 2,
        "output_type": "latent",
    }
    expected = eager(**arguments).images
    torch.testing.assert_close(fast(**arguments).images, expected, rtol=1e-4, atol=1e-4)

    # A served request's stop hooks stay out of the compiled blocks, and still stop it.
    request = ServedRequest("compiled", deadline=math.inf)
    stop = RequestStop(request)
    with stop.inside_networks(fast, levers):
        assert not any(block._forward_pre_hooks for block in blocks)
        painted = fast(**arguments, callback_on_step_end=stop).images
        torch.testing.assert_close(painted, expected, rtol=1e-4, atol=1e-4)
        request.cancel("timeout")
        with pytest.raises(RequestCancelled):
            fast(**arguments)
    assert request.steps == 2
