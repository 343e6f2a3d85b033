"""The `training` and `evaluation` sections of params.yaml (article section 3.2.5).

Kept free of torch and diffusers, so that validating params.yaml imports neither. The names
that training code defines (model configs, ablations) are listed here as literals; a test keeps
them equal to `training.model.CONFIGS` and `training.evaluate.ABLATIONS`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.params import Section
from perception.params import similarity_scale_problem

ModelConfigName = Literal["sdxl", "tiny"]  # training.model.CONFIGS
AblationName = Literal["inpainting", "face", "face_body", "full"]  # training.evaluate.ABLATIONS
# torch.nn.attention.SDPBackend members by name; "default": PyTorch chooses per call.
AttentionBackend = Literal["default", "flash", "cudnn", "efficient", "math"]
# torch.compile backends: inductor generates fused kernels; aot_eager traces the same graphs
# (forward and backward) and runs them eagerly, with no code generation: for bisecting a
# compile problem; eager stops after dynamo's capture (graph breaks and recompiles show, no
# backward is traced): for runs that check code paths rather than speed (a CPU smoke run).
CompileBackend = Literal["inductor", "aot_eager", "eager"]
TripletSource = Literal["movie", "single", "synthetic"]  # the manifest's `source`
TRIPLET_SOURCES: tuple[TripletSource, ...] = ("movie", "single", "synthetic")
UNetPart = Literal["down", "mid", "up"]  # the U-Net's block groups


class Acceleration(Section):
    """GPU speed levers of the U-Net and the ControlNet (`training.acceleration`), shared by
    training, the inference pipeline and the served model. Every one is off by default, as
    the model ran before they existed: none has a GPU measurement yet (BENCHMARKS.md, "Model
    (GPU): speed levers and the diffusers peer"). Outputs stay the same within floating-point
    tolerance."""

    channels_last: bool = False  # NHWC memory layout of the U-Net and the ControlNet
    cudnn_benchmark: bool = False  # cuDNN times its convolution algorithms once per shape
    attention_backend: AttentionBackend = "default"  # the scaled-dot-product attention kernel
    # torch.compile of the repeated transformer and ResNet blocks only (regional): every
    # bucket shape compiles a block once, not the whole model.
    compile: bool = False
    compile_backend: CompileBackend = "inductor"


class DDPOptions(Section):
    """DistributedDataParallel's options (more than one process); the defaults are DDP's."""

    gradient_as_bucket_view: bool = False  # gradients live in the buckets: one copy, not two
    static_graph: bool = False  # the same parameters are used every step (true here)
    bucket_cap_mb: float = Field(25.0, gt=0)  # all-reduce bucket size
    bf16_compress: bool = False  # all-reduce gradients in bfloat16 (half the traffic)


class ConditionDropout(Section):
    """Probabilities of dropping conditions for a sample (classifier-free guidance): `all`
    drops text, face and body together (the unconditional branch guidance uses at every
    inference step, as IP-Adapter trains it); otherwise each is dropped on its own."""

    all: float = Field(0.05, ge=0, le=1)
    text: float = Field(0.05, ge=0, le=1)
    face: float = Field(0.05, ge=0, le=1)
    body: float = Field(0.05, ge=0, le=1)


class TrainingParams(Section):
    """The `training` section."""

    config: ModelConfigName = "sdxl"
    seed: int = 0
    validation_fraction: float = Field(0.1, ge=0, lt=1)  # of the identities, held out
    # Identities whose mean reference face embeddings (the profile's recogniser) reach this
    # cosine are one person, kept on one side of the split (a single image of a movie's
    # character, the same actor in two movies); null: each identity is split on its own.
    same_person_similarity: float | None = Field(0.5, ge=-1, le=1)
    # Each source's share of an epoch, per triplet: 2 draws each of its triplets twice, 0.5
    # half of them (a different half each epoch); the split is unchanged.
    source_weights: dict[TripletSource, float] = Field(
        default_factory=lambda: dict.fromkeys(TRIPLET_SOURCES, 1.0)
    )
    buckets: str | list[Any] = "pixart_1024"  # or "h,w;h,w;…"
    batch_size: int = Field(1, ge=1)  # per process (the article: one sample per GPU, 8 H100s)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(100_000, ge=1)  # optimiser steps
    # The face branch and Pose-IdentityNet start from InstantID's weights; the body resampler
    # and its cross-attention start from random ones (IP-Adapter trains fresh adapters at 1e-4).
    learning_rate: float = Field(1.0e-5, gt=0)
    body_learning_rate: float = Field(1.0e-4, gt=0)
    lr_scheduler: str = "constant_with_warmup"  # diffusers.optimization.get_scheduler names
    lr_warmup_steps: int = Field(500, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1.0e-8, gt=0)
    weight_decay: float = Field(1.0e-2, ge=0)
    use_8bit_adam: bool = True  # bitsandbytes' AdamW8bit (CUDA); refused where it cannot run
    max_grad_norm: float = Field(1.0, ge=0)  # 0: no clipping (the norm is still logged)
    # bf16: autocast; bf16_pure: every op in bfloat16, norms too, float32 master weights kept
    # for the optimiser (training.precision); no: float32.
    mixed_precision: Literal["bf16", "bf16_pure", "no"] = "bf16"
    gradient_checkpointing: bool = False  # on: less memory, about 2x the step (BENCHMARKS.md)
    ema_decay: float = Field(0.0, ge=0, lt=1)  # 0: no EMA of the trainable weights
    snr_gamma: float = Field(0.0, ge=0)  # 0: plain MSE; else min-SNR-γ weighting
    cfg_dropout: ConditionDropout = ConditionDropout()
    features: bool = True  # read the precomputed features stage; false: encode every step
    acceleration: Acceleration = Acceleration()
    ddp: DDPOptions = DDPOptions()
    # torch's ZeroRedundancyOptimizer: each rank keeps the optimiser state of its share of the
    # trainable parameters (1/world size of it per GPU; `cameo train --dry-run` sizes it).
    zero_optimizer: bool = False
    # The same kernels on every x86-64 CPU (training.cpu_kernels): bit-identical CPU runs.
    portable_cpu_kernels: bool = False
    num_workers: int = Field(4, ge=0)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    validate_every: int = Field(1000, ge=1)
    validation_samples: int = Field(4, ge=0)  # triplets drawn as 5-panel grids (rank 0)
    # valid/loss: the first N validation triplets, sharded over the ranks, the same every time
    validation_max_samples: int = Field(256, ge=1)
    collective_timeout_s: int = Field(1800, ge=1)  # a rank waiting longer fails the job
    # The longest one MLflow call may hold training up; the tracking server being away for
    # longer never stops training (metrics are kept and logged when it is back).
    tracking_timeout_s: int = Field(30, ge=1)
    validation_inference_steps: int = Field(30, ge=1)
    log_every: int = Field(10, ge=1)
    output_dir: str = "checkpoints"
    trust_remote_code: bool = False  # run the body encoder's own code (InternViT needs it)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _unquoted_no(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `no` as false, and `dvc exp run -S` rewrites params.yaml
        # without the quotes.
        return "no" if value is False else value

    @field_validator("source_weights")
    @classmethod
    def _non_negative_weights(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {source: w for source, w in value.items() if w < 0}
        if negative:
            raise ValueError(f"weights must be at least 0, got {negative}")
        return {**dict.fromkeys(TRIPLET_SOURCES, 1.0), **value}

    @model_validator(mode="after")
    def _static_graph_without_accumulation(self) -> TrainingParams:
        # torch's DDP with a static graph fails on a backward pass under no_sync() (pytorch
        # issue 143580), and where that is patched it stops all-reducing after the first step
        # (pull request 187732): refused here rather than found on the cluster.
        if self.ddp.static_graph and self.gradient_accumulation_steps > 1:
            raise ValueError(
                "ddp.static_graph cannot be used with gradient_accumulation_steps > 1 (torch's "
                "DDP fails on the accumulated micro-steps): set one of them back"
            )
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint it continues: the model, and
        everything that decides the data order and the split (not the step budget or the
        logging cadence)."""
        return {
            "config": self.config,
            "buckets": self.buckets,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "validation_fraction": self.validation_fraction,
            "same_person_similarity": self.same_person_similarity,
            "source_weights": self.source_weights,
        }


class ConsistencyParams(Section):
    """ConsiStory's settings (`training.consistory`, article section 4.1); the defaults are
    those of NVIDIA's public code for SDXL."""

    anchors: int = Field(2, ge=1)  # images whose subject patches every image attends to
    mask_dropout: float = Field(0.5, ge=0.0, le=1.0)  # share of subject patches left out a step
    parts: list[UNetPart] = Field(default_factory=lambda: ["up"])  # shared self-attention
    mask_resolution: int = Field(32, ge=1)  # longer side of the maps the subject masks use
    query_steps: float = Field(0.1, ge=0.0, le=1.0)  # fraction of the steps blending queries
    # The vanilla queries' weight, at the first and at the last blended step.
    query_strength: list[float] = Field(default_factory=lambda: [0.9, 0.818])
    # Fractions of the steps, from and to, in which matched features are injected.
    inject_steps: list[float] = Field(default_factory=lambda: [0.1, 1 / 3])
    inject_alpha: float = Field(0.8, ge=0.0, le=1.0)  # the anchor's weight at a matched patch
    inject_parts: list[UNetPart] = Field(default_factory=lambda: ["up", "down"])
    dift_timestep: int = Field(261, ge=0)  # whose decoder features give correspondences
    dift_block: int = Field(1, ge=0)  # the decoder block whose output they are

    @field_validator("query_strength", "inject_steps")
    @classmethod
    def _pair(cls, value: list[float]) -> list[float]:
        if len(value) != 2:
            raise ValueError(f"needs two values (first, last), got {value}")
        return value


class SyntheticParams(Section):
    """The `synthetic` section: characters made by a text-to-image model (article section 4.1),
    a source of triplets beside the movies and the single images. Off with `count` 0."""

    count: int = Field(0, ge=0)  # characters described and drawn; 0: no synthetic data
    seed: int = Field(0, ge=0)  # of the descriptions, the settings and the initial latents
    styles: list[Literal["photo", "anime"]] = Field(default_factory=lambda: ["photo", "anime"])
    # A causal language model folder under $CAMEO_MODELS phrasing the descriptions (full);
    # null: the template's sentences.
    describer: str | None = None
    # SDXL text-to-image folder under $CAMEO_MODELS (diffusers layout)
    model: str = "stable-diffusion-xl-base-1.0"
    batch_size: int = Field(4, ge=2)  # images of one character, drawn together: one batch
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(5.0, ge=0.0)
    size: int = Field(1024, ge=16)  # pixels per side
    consistent: bool = True  # false: plain, independent images (the method off)
    consistency: ConsistencyParams = ConsistencyParams()
    # dlib's cosine of each image's face to the first image's below which the batch shows
    # more than one person and is dropped: the triplets' own identity threshold.
    min_identity_similarity: float = Field(0.91, ge=-1.0, le=1.0)

    @model_validator(mode="after")
    def _anchors_in_the_batch(self) -> SyntheticParams:
        if self.consistency.anchors > self.batch_size:
            raise ValueError(
                f"consistency.anchors ({self.consistency.anchors}) > batch_size ({self.batch_size})"
            )
        problem = similarity_scale_problem(
            "synthetic.min_identity_similarity", self.min_identity_similarity, "dlib"
        )
        if problem:
            raise ValueError(problem)
        return self


class EvaluationParams(Section):
    """The `evaluation` section: the validation triplets scored, with their ablations."""

    samples: int = Field(16, ge=1)  # validation triplets scored, first in manifest order
    inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(5.0, ge=0)
    # The recogniser that scores identity: dlib (face-recognition-models' ResNet, on every
    # profile) or an insightface folder under the models directory. Not the ArcFace the model
    # is conditioned on, so the model is not judged by the network it trained against.
    face_model: str = "dlib"
    # Scored as extra columns (`face_similarity_<name>`, ...) where its weights exist; "": none.
    second_face_model: str = "antelopev2"
    clip_model: str = "clip-vit-large-patch14"  # transformers CLIPModel folder; absent: skipped
    pck_alpha: float = Field(0.1, gt=0, le=1)  # of the visible keypoints' extent
    ablations: list[AblationName] = Field(
        default_factory=lambda: ["inpainting", "face", "face_body", "full"]
    )
    # The `evaluation` asset's identity gate: sim_gt at least this (on the face_model's scale)
    # in a share min_identity_share of the outputs, a face in min_face_found of them, and
    # copy-paste below the paste row's. null: off (the tiny profile's random weights).
    min_face_similarity: float | None = None
    min_identity_share: float = Field(0.5, ge=0.0, le=1.0)
    min_face_found: float = Field(0.9, ge=0.0, le=1.0)
    # Copy-paste is scored only where reference and target are this far apart (radians) in
    # the recogniser's space: resampling or JPEG alone moves dlib's descriptors 0.03-0.20, a
    # mirror 0.13, a shifted box up to 0.135; two people are about 0.49 apart.
    copy_paste_min_angle: float = Field(0.2, ge=0.0, le=math.pi)
    # Resamples of the 95 % bootstrap interval beside every identity figure.
    bootstrap_resamples: int = Field(1000, ge=0)

    @model_validator(mode="after")
    def _threshold_on_the_recognisers_scale(self) -> EvaluationParams:
        recogniser = "dlib" if self.face_model == "dlib" else "arcface"  # insightface folders
        problem = similarity_scale_problem(
            "evaluation.min_face_similarity", self.min_face_similarity, recogniser
        )
        if problem:
            raise ValueError(problem)
        return self
