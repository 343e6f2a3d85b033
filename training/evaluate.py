"""Evaluation: the field's identity metrics on the validation triplets, for the model and its
ablations.

Each validation triplet (the identity-disjoint split of `training.data.split_by_identity`) is
repainted: its target frame is the base, its character mask the region, its pose drawing the
condition, its reference crop and face embedding the identity. The output is scored against the
triplet:

- `face_similarity`: cosine of the reference's and the output's face embeddings (the face in the
  mask), by the training recogniser or a second one (`evaluation.face_model`), as identity
  papers report it; `face_found`: whether the output has a face in the mask at all;
- `pck_body`, `pck_face`: keypoints re-extracted from the output against the conditioning ones
  (those of the ground-truth target, which the pose drawing shows), correct within
  `pck_alpha` × the extent of the visible conditioning keypoints of that group;
- `clip_score`: CLIP text–image score, 100 × max(cos, 0), where a CLIP model is in the models
  directory (prompts are cut at CLIP's 77 tokens);
- `saturation_ratio`: mean HSV saturation of the painted region over that of the same region of
  the target. InstantID-style models over-saturate (the article's Fig. 14): above 1 is that.

Ablations come from the same weights by scale: SDXL inpainting alone (every identity scale 0),
plus the face branch, plus the body branch, plus Pose-IdentityNet (the full model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import PIL.Image
import torch

from core.layout import DataLayout
from core.versioning import dvc_md5
from perception.faces import FaceAnalyzer, identity_score
from perception.params import FacesParams, PosesParams
from perception.pose import Pose, RTMPoseEstimator, extract_pose, mask_box, masked_image
from perception.priors import Priors
from training.data import fit_to_bucket, place
from training.grid import inpaint_grid
from training.params import EvaluationParams, TrainingParams
from training.pipeline import PaintSettings

if TYPE_CHECKING:
    from training.pipeline import CharacterInpaintPipeline

BODY_KEYPOINTS = slice(0, 23)  # COCO-WholeBody: 17 body + 6 feet
FACE_KEYPOINTS = slice(23, 91)  # 68 face landmarks


@dataclass(frozen=True)
class Scales:
    """The weights of ICA1 (face), ICA2 (body) and Pose-IdentityNet for one ablation."""

    face: float
    body: float
    pose: float


ABLATIONS: dict[str, Scales] = {
    "inpainting": Scales(face=0.0, body=0.0, pose=0.0),  # SDXL inpainting alone
    "face": Scales(face=1.0, body=0.0, pose=0.0),  # + face branch
    "face_body": Scales(face=1.0, body=1.0, pose=0.0),  # + body branch
    "full": Scales(face=1.0, body=1.0, pose=1.0),  # + Pose-IdentityNet: the model
}
FULL = "full"
METRICS = (
    "face_similarity",
    "face_found",
    "pck_body",
    "pck_face",
    "clip_score",
    "saturation_ratio",
)


# ---------------------------------------------------------------------------------------------
# The metrics, each a pure function of arrays


def pck(
    predicted: np.ndarray,
    predicted_scores: np.ndarray,
    target: np.ndarray,
    target_scores: np.ndarray,
    alpha: float,
    score_threshold: float,
) -> float:
    """Percentage of correct keypoints: of the target keypoints scored >= `score_threshold`,
    the fraction the prediction also finds within `alpha` × the larger side of their box.
    NaN when no target keypoint is visible."""
    visible = target_scores >= score_threshold
    if not visible.any():
        return math.nan
    reference = target[visible]
    size = max(float((reference.max(axis=0) - reference.min(axis=0)).max()), 1.0)
    distance = np.linalg.norm(predicted[visible] - reference, axis=1)
    found = predicted_scores[visible] >= score_threshold
    return float(((distance <= alpha * size) & found).mean())


def mean_saturation(image: np.ndarray, inside: np.ndarray) -> float:
    """Mean HSV saturation, (max - min) / max of RGB, of an RGB uint8 image's pixels in
    `inside`; NaN for an empty region."""
    pixels = image[inside].astype(np.float32)
    if len(pixels) == 0:
        return math.nan
    high, low = pixels.max(axis=1), pixels.min(axis=1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return float(saturation.mean())


def saturation_ratio(output: np.ndarray, target: np.ndarray, inside: np.ndarray) -> float:
    """The painted region's mean saturation over the target's in the same region."""
    reference = mean_saturation(target, inside)
    return mean_saturation(output, inside) / reference if reference > 0 else math.nan


class ClipScorer:
    """CLIP-T: 100 × max(cosine, 0) of a transformers CLIP model's image and text features."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.folder = Path(folder)
        self.model = CLIPModel.from_pretrained(self.folder).eval()
        self.processor = CLIPProcessor.from_pretrained(self.folder)

    @torch.no_grad()
    def __call__(self, image: PIL.Image.Image, text: str) -> float:
        inputs = self.processor(
            text=[text], images=[image], return_tensors="pt", padding=True, truncation=True
        )
        # CLIPOutput's image and text embeddings are projected and unit-normed.
        output = self.model(**inputs)
        cosine = (output.image_embeds * output.text_embeds).sum(dim=-1)
        return 100.0 * max(float(cosine[0]), 0.0)


# ---------------------------------------------------------------------------------------------
# Scoring the model on validation triplets


@dataclass
class ValidationSample:
    """One validation triplet, as the model sees it: placed in its bucket."""

    triplet_id: str
    base: PIL.Image.Image  # the ground-truth target frame
    mask: PIL.Image.Image
    pose: PIL.Image.Image
    reference: PIL.Image.Image  # the segmented reference crop
    face_embedding: np.ndarray  # raw scale: unit embedding × raw norm
    prompt: str

    @classmethod
    def from_row(cls, row: Any, root: Path, buckets: Sequence[tuple[int, int]]) -> ValidationSample:
        with PIL.Image.open(root / row.target) as target:
            placement = place(target.height, target.width, buckets)
        images = {}
        for column, mode, resample in (
            ("target", "RGB", PIL.Image.Resampling.BICUBIC),
            ("target_mask", "L", PIL.Image.Resampling.NEAREST),
            ("target_pose", "RGB", PIL.Image.Resampling.BICUBIC),
        ):
            with PIL.Image.open(root / getattr(row, column)) as image:
                images[column] = fit_to_bucket(image.convert(mode), placement, resample)
        with PIL.Image.open(root / row.reference_crop) as crop:
            reference = crop.convert("RGB")
        unit = np.asarray(row.face_embedding, np.float32)
        return cls(
            triplet_id=row.triplet_id,
            base=images["target"],
            mask=images["target_mask"],
            pose=images["target_pose"],
            reference=reference,
            face_embedding=unit * np.float32(row.face_embedding_raw_norm),
            prompt=row.prompt,
        )

    @property
    def inside(self) -> np.ndarray:
        return np.asarray(self.mask) >= 128  # binarised as the pipeline does


@dataclass
class Evaluation:
    """Per-sample scores (one row per ablation and triplet), the 5-panel grids, and why any
    metric was not computed."""

    samples: pd.DataFrame
    grids: list[tuple[str, str, PIL.Image.Image]]  # (ablation, triplet_id, grid)
    notes: dict[str, str]

    def summary(self) -> pd.DataFrame:
        """Means per ablation, in ablation order: the ablation table."""
        table = self.samples.groupby("ablation", sort=False)[list(METRICS)].mean()
        table.insert(0, "samples", self.samples.groupby("ablation", sort=False).size())
        return table.reset_index()

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: `eval/<metric>` for the full model, `eval/<ablation>/<metric>`
        for each ablation. NaN where nothing could be scored (e.g. no face found)."""
        flat = {}
        for row in self.summary().itertuples(index=False):
            for metric in METRICS:
                value = float(getattr(row, metric))
                flat[f"eval/{row.ablation}/{metric}"] = value
                if row.ablation == FULL:
                    flat[f"eval/{metric}"] = value
        return flat


class Evaluator:
    """The scorers of one profile: the face recogniser, the pose estimator, CLIP if present."""

    def __init__(
        self,
        params: EvaluationParams,
        face_scorer: FaceAnalyzer,
        pose_estimator: RTMPoseEstimator,
        score_threshold: float,
        clip: ClipScorer | None,
        notes: dict[str, str],
    ) -> None:
        self.params = params
        self.face_scorer = face_scorer
        self.pose_estimator = pose_estimator
        self.score_threshold = score_threshold
        self.clip = clip
        self.notes = notes

    @classmethod
    def build(cls, params: EvaluationParams, priors: Priors) -> Evaluator:
        """The scorers of `priors`' profile: its face analyzer (or `params.face_model`, a
        second recogniser), its pose estimator, and CLIP where the models directory has it."""
        from perception.models import models_dir as resolve_models_dir

        if params.face_model:
            face_scorer = priors.recogniser(params.face_model)
            recogniser = f"{params.face_model} (second recogniser)"
        else:
            face_scorer = priors.face_analyzer()
            recogniser = (
                "tiny face analyzer"
                if priors.profile == "tiny"
                else f"{priors.faces.model} (training)"
            )
        notes = {"face_recogniser": recogniser}
        clip_folder = resolve_models_dir(priors.models_dir) / params.clip_model
        clip = None
        if (clip_folder / "config.json").is_file():
            clip = ClipScorer(clip_folder)
            notes["clip_model"] = str(clip_folder)
        else:
            notes["clip_score"] = f"skipped: no CLIP model at {clip_folder}"
        return cls(
            params,
            face_scorer,
            priors.pose_estimator(),
            priors.poses.score_threshold,
            clip,
            notes,
        )

    def reference_embedding(self, sample: ValidationSample) -> np.ndarray | None:
        """The reference's identity in the scorer's space: the manifest's embedding when the
        scorer is the training recogniser, else the largest face the scorer finds in the crop."""
        if not self.params.face_model:
            return sample.face_embedding
        faces = self.face_scorer.detect(np.asarray(sample.reference))
        return max(faces, key=lambda f: f.area).embedding if faces else None

    def conditioning_pose(self, sample: ValidationSample) -> Pose | None:
        """The keypoints that conditioned the sample: the target's, extracted as the dataset's
        poses stage did (None when none is visible)."""
        condition, _ = extract_pose(
            self.pose_estimator,
            np.asarray(sample.base),
            sample.inside,
            self.score_threshold,
            min_keypoints=1,
        )
        return condition

    def score(
        self,
        sample: ValidationSample,
        output: PIL.Image.Image,
        reference: np.ndarray | None,
        condition: Pose | None,
    ) -> dict[str, float]:
        """Every metric of one output against its triplet, given the reference's embedding in
        the scorer's space and the conditioning pose (both the same for every ablation)."""
        inside = sample.inside
        painted, target = np.asarray(output.convert("RGB")), np.asarray(sample.base)
        similarity = (
            identity_score(self.face_scorer, reference, output, inside)
            if reference is not None
            else None
        )
        scores = {
            "face_similarity": math.nan if similarity is None else similarity,
            "face_found": float(similarity is not None),
            "pck_body": math.nan,
            "pck_face": math.nan,
            "clip_score": self.clip(output, sample.prompt) if self.clip else math.nan,
            "saturation_ratio": saturation_ratio(painted, target, inside),
        }
        box = mask_box(inside)
        if condition is not None and box is not None:
            found = self.pose_estimator.estimate(masked_image(painted, inside), box)
            for name, group in (("pck_body", BODY_KEYPOINTS), ("pck_face", FACE_KEYPOINTS)):
                scores[name] = pck(
                    found.keypoints[group],
                    found.scores[group],
                    condition.keypoints[group],
                    condition.scores[group],
                    self.params.pck_alpha,
                    self.score_threshold,
                )
        return scores

    @torch.no_grad()
    def evaluate(
        self,
        pipe: CharacterInpaintPipeline,
        samples: Sequence[ValidationSample],
        ablations: Sequence[str] | None = None,
        inference_steps: int | None = None,
        seed: int = 0,
    ) -> Evaluation:
        """Repaint every sample under every ablation (same seed: only the scales differ) and
        score the outputs."""
        ablations = list(ablations or self.params.ablations)
        rows, grids = [], []
        for sample in samples:
            reference = self.reference_embedding(sample)
            condition = self.conditioning_pose(sample)
            for name in ablations:
                scales = ABLATIONS[name]
                settings = PaintSettings(
                    face_scale=scales.face,
                    body_scale=scales.body,
                    controlnet_scale=scales.pose,
                    guidance_scale=self.params.guidance_scale,
                    num_inference_steps=inference_steps or self.params.inference_steps,
                    seed=seed,
                )
                output = pipe.paint(
                    sample.base,
                    sample.mask,
                    sample.prompt,
                    sample.reference,
                    sample.face_embedding,
                    sample.pose,
                    settings,
                )
                rows.append(
                    {"ablation": name, "triplet_id": sample.triplet_id}
                    | self.score(sample, output, reference, condition)
                )
                pose_panel = sample.pose if scales.pose else None
                grid = inpaint_grid(
                    sample.base, sample.mask, pose_panel, sample.reference, output, sample.prompt
                )
                grids.append((name, sample.triplet_id, grid))
        samples_table = pd.DataFrame(rows, columns=["ablation", "triplet_id", *METRICS])
        return Evaluation(samples_table, grids, dict(self.notes))


def log_evaluation(
    evaluation: Evaluation,
    step: int = 0,
    model_id: str | None = None,
    dataset: Any = None,
) -> None:
    """Into the active MLflow run: the metrics at `step` (linked to the logged model and the
    validation dataset where given); the per-sample table with each output's 5-panel grid and
    the ablation table, both appended to across steps and evaluations (`step` column); the grids
    as images keyed by ablation and triplet, so the UI steps through them; the notes."""
    import mlflow

    mlflow.log_metrics(evaluation.metrics(), step=step, model_id=model_id, dataset=dataset)
    # `grids` is in the order of the sample rows: one per (ablation, triplet).
    samples = evaluation.samples.assign(grid=[grid for _, _, grid in evaluation.grids], step=step)
    mlflow.log_table(samples, "evaluation/samples.json")
    mlflow.log_table(evaluation.summary().assign(step=step), "evaluation/ablations.json")
    mlflow.log_dict(evaluation.notes, "evaluation/notes.json")
    for ablation, triplet_id, grid in evaluation.grids:
        mlflow.log_image(grid, key=f"evaluation/{ablation}/{triplet_id}", step=step)


def evaluate_logged_model(
    model_uri: str,
    training: TrainingParams,
    evaluation: EvaluationParams,
    faces: FacesParams,
    poses: PosesParams,
    data_root: str | Path | None = None,
    models_dir: str | Path | None = None,
) -> tuple[Evaluation, str]:
    """Score a logged `cameo-inpaint` model (any MLflow model URI) on the validation split of
    the current triplets, every ablation, and log it into the run that trained it (the model's
    `training_run_id`), linked to the model and the dataset. Returns the evaluation and that
    run's id.

    The split is the model's own: the seed, validation fraction and buckets its run logged.
    The dataset's md5 is tagged, so a score on another dataset version than the one trained on
    shows as such."""
    import mlflow

    from training.data import load_manifest, resolve_buckets, split_by_identity
    from training.tracking import configure_tracking, triplets_dataset

    configure_tracking()
    info = mlflow.models.get_model_info(model_uri)
    client = mlflow.MlflowClient()
    # The run that trained it: a checkpoint logged later (`cameo model log`) names it.
    run = client.get_run((info.metadata or {}).get("training_run_id") or info.run_id)
    logged = {
        key: cast(run.data.params[f"training.{key}"])
        for key, cast in (("seed", int), ("validation_fraction", float), ("buckets", str))
        if f"training.{key}" in run.data.params
    }
    training = training.updated("training", **logged)
    layout = DataLayout.from_env(data_root)
    manifest = load_manifest(layout.triplets_dir)
    _, validation = split_by_identity(manifest, training.validation_fraction, training.seed)
    if validation.empty:
        raise ValueError(f"no validation identities in {layout.triplets_dir}: nothing to score")
    buckets = resolve_buckets(training.buckets)
    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    priors = Priors(model.profile, faces=faces, poses=poses, models_dir=models_dir)
    evaluator = Evaluator.build(evaluation, priors)
    samples = [
        ValidationSample.from_row(row, layout.triplets_dir, buckets)
        for row in validation.head(evaluator.params.samples).itertuples(index=False)
    ]
    result = evaluator.evaluate(model.pipeline, samples, seed=training.seed)
    md5 = dvc_md5(layout.triplets_dir)
    history = client.get_metric_history(run.info.run_id, "loss")
    step = max((m.step for m in history), default=0)  # the trained step: after its validations
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.set_tags({"evaluation.dataset_md5": md5, "evaluation.model_uri": model_uri})
        dataset = triplets_dataset(validation, layout.triplets_dir, "triplets-validation", md5)
        log_evaluation(result, step=step, model_id=info.model_id, dataset=dataset)
    return result, run.info.run_id
