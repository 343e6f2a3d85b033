"""Evaluation: the field's identity metrics on the validation triplets, for the model and its
ablations, read against two calibration rows.

Each validation triplet (the identity-disjoint split of `training.data.split_by_identity`) is
repainted: its target frame is the base, its character mask the region, its pose drawing the
condition, its reference crop and face embedding the identity. The output is scored against the
triplet:

- identity, by a recogniser independent of the ArcFace the model is conditioned on
  (`evaluation.face_model`, dlib by default; PuLID likewise scores with CurricularFace), at the
  target frame's size (the output resized back) and at the character's face: the face the
  recogniser finds where the faces stage found it, in the reference, the target and the output.
  `face_similarity` (sim_ref), cosine of the output's face and the reference's;
  `face_similarity_gt` (sim_gt), of the output's face and the target frame's (a movie triplet's
  target is a held-out frame of the same person); `face_copy_paste`, how much closer the output
  is to the reference than the real target is (WithAnyone's MultiID-Bench: +1 a pasted
  reference, -1 the target itself); `face_found`, whether the output has a face there.
  `evaluation.second_face_model` (antelopev2) adds the same four, suffixed with its name, where
  its weights exist;
- `pck_body`, `pck_face`: keypoints re-extracted from the output against the conditioning ones
  (those of the ground-truth target, which the pose drawing shows), correct within
  `pck_alpha` × the extent of the visible conditioning keypoints of that group;
- `clip_score`: CLIP text–image score, 100 × max(cos, 0), where a CLIP model is in the models
  directory (prompts are cut at CLIP's 77 tokens);
- `saturation_ratio`: mean HSV saturation of the painted region over that of the same region of
  the target. InstantID-style models over-saturate (the article's Fig. 14): above 1 is that.

Calibration rows are scored the same way, through the same bucket round trip, and need no
model: `ground_truth`, the target frame itself as the output (what a perfect repainting scores;
its sim_ref is the triplet's own identity similarity), and `paste`, the reference resized and
pasted into the mask's box with its face on the target's (what copying the reference scores).
Copy-paste is scored only where reference and target are `copy_paste_min_angle` apart in the
recogniser's space (closer, the ratio is descriptor noise), and aggregated as the benchmark
does: the mean within 1.5 × IQR (median where that leaves none), beside the median and n.
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

from perception.faces import FaceAnalyzer, face_at
from perception.pose import Pose, RTMPoseEstimator, extract_pose, mask_box, masked_image
from perception.priors import Priors
from training.data import Placement, conditioning_face, fit_to_bucket, place
from training.grid import Panels
from training.metrics import (
    ClipScorer,
    Identity,
    benchmark_mean,
    figure_spread,
    identity_scores,
    pck,
    saturation_ratio,
    with_interval,
)
from training.params import EvaluationParams
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
ROW_KEYS = ("ablation", "triplet_id", "source")  # which row is which: no metric
# Rows without a model, first in every table: the target itself and the pasted reference.
CALIBRATIONS = ("ground_truth", "paste")
# Per recogniser: sim_ref, sim_gt, the copy-paste score, and whether a face was found.
IDENTITY_METRICS = ("face_similarity", "face_similarity_gt", "face_copy_paste", "face_found")
# Those read as figures about identity: each gets its n and a bootstrap interval.
SCORED_IDENTITY = IDENTITY_METRICS[:3]
# Scored on movie triplets only: a single's target is its own reference, mirrored.
MOVIE_ONLY = ("face_similarity_gt", "face_copy_paste")
METRICS = (*IDENTITY_METRICS, "pck_body", "pck_face", "clip_score", "saturation_ratio")
# What a metric needs of a sample, without which its score is NaN (clip_score always has one);
# `Evaluation.unscored` says so for a metric no sample had it for.
NEEDS = {
    "face_found": "a photo triplet (no recogniser here sees anime faces)",
    "face_similarity": "a face in the output and the reference where the faces stage found them",
    "face_similarity_gt": "a face in the output and the target frame (movie triplets only)",
    "face_copy_paste": (
        "a face in the output, the reference and the target frame, the latter two at least "
        "evaluation.copy_paste_min_angle apart (movie triplets only)"
    ),
    "pck_body": "body keypoints visible in the conditioning pose",
    "pck_face": "face keypoints visible in the conditioning pose",
    "saturation_ratio": "colour in the target's masked region",
}


# ---------------------------------------------------------------------------------------------
# Scoring the model on validation triplets


@dataclass
class ValidationSample:
    """One validation triplet, as the model sees it (placed in its bucket), and its two frames
    at their own size with the character's face box in each, where identity is scored."""

    triplet_id: str
    source: str  # movie, single or synthetic (the manifest's column)
    style: str  # photo or anime: no identity scored on anime (BENCHMARKS.md, "Anime identity")
    base: PIL.Image.Image  # the ground-truth target frame, in the bucket
    mask: PIL.Image.Image
    pose: PIL.Image.Image
    reference: PIL.Image.Image  # the segmented reference crop
    face_embedding: np.ndarray  # raw scale: unit embedding × raw norm
    prompt: str
    frame: PIL.Image.Image  # the target frame at its own size
    frame_mask: PIL.Image.Image
    placement: Placement  # how the frame went into the bucket
    reference_frame: PIL.Image.Image  # the reference image the crop was cut from
    reference_face_box: np.ndarray  # the character's face (x1, y1, x2, y2 px), faces stage
    target_face_box: np.ndarray  # in `frame`

    @classmethod
    def from_row(cls, row: Any, root: Path, buckets: Sequence[tuple[int, int]]) -> ValidationSample:
        images = {}
        for column, mode in (
            ("target", "RGB"),
            ("target_mask", "L"),
            ("target_pose", "RGB"),
            ("reference", "RGB"),
            ("reference_crop", "RGB"),
        ):
            with PIL.Image.open(root / getattr(row, column)) as image:
                images[column] = image.convert(mode)
        frame = images["target"]
        placement = place(frame.height, frame.width, buckets)
        face = row.face_embedding, row.face_embedding_raw_norm, row.face_dropped
        bicubic, nearest = PIL.Image.Resampling.BICUBIC, PIL.Image.Resampling.NEAREST
        return cls(
            triplet_id=row.triplet_id,
            source=row.source,
            style=row.style,
            base=fit_to_bucket(frame, placement, bicubic),
            mask=fit_to_bucket(images["target_mask"], placement, nearest),
            pose=fit_to_bucket(images["target_pose"], placement, bicubic),
            reference=images["reference_crop"],
            face_embedding=conditioning_face(*face),
            prompt=row.prompt,
            frame=frame,
            frame_mask=images["target_mask"],
            placement=placement,
            reference_frame=images["reference"],
            reference_face_box=np.asarray(row.reference_bbox, np.float32),
            target_face_box=np.asarray(row.target_bbox, np.float32),
        )

    @property
    def inside(self) -> np.ndarray:
        return np.asarray(self.mask) >= 128  # binarised as the pipeline does

    def in_frame(self, painted: PIL.Image.Image) -> PIL.Image.Image:
        """A bucket-size output at the target frame's size: resized back over the part of the
        frame the bucket shows (white where the bucket's crop cut the frame, so no target pixel
        is scored as the model's). A small bucket's face would be too small to recognise."""
        top, left = self.placement.crop_top_left
        bucket_h, bucket_w = self.placement.bucket
        (resized_h, resized_w), (height, width) = (
            self.placement.resized,
            self.placement.original_size,
        )
        x1, y1 = round(left * width / resized_w), round(top * height / resized_h)
        x2 = round((left + bucket_w) * width / resized_w)
        y2 = round((top + bucket_h) * height / resized_h)
        canvas = PIL.Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(
            painted.convert("RGB").resize((x2 - x1, y2 - y1), PIL.Image.Resampling.BICUBIC),
            (x1, y1),
        )
        return canvas

    def pasted_reference(self) -> PIL.Image.Image:
        """The `paste` calibration at the frame's size: the reference, scaled and shifted so the
        character's face lands on the target's face box, over the mask's box (the rest is the
        target frame): what a model that copies the reference in would paint. The reference
        image rather than its segmented crop, whose mask can cut into the face (the tiny
        profile's SAM is random)."""
        rx1, ry1, rx2, _ = self.reference_face_box
        tx1, ty1, tx2, _ = self.target_face_box
        scale = (tx2 - tx1) / max(rx2 - rx1, 1.0)
        reference = self.reference_frame.resize(
            (
                max(round(self.reference_frame.width * scale), 1),
                max(round(self.reference_frame.height * scale), 1),
            ),
            PIL.Image.Resampling.BICUBIC,
        )
        moved = PIL.Image.new("RGB", self.frame.size, (255, 255, 255))
        moved.paste(reference, (round(tx1 - rx1 * scale), round(ty1 - ry1 * scale)))
        pasted = np.asarray(self.frame).copy()
        box = mask_box(np.asarray(self.frame_mask) >= 128)
        if box is not None:
            x1, y1, x2, y2 = (round(v) for v in box)
            pasted[y1:y2, x1:x2] = np.asarray(moved)[y1:y2, x1:x2]
        return PIL.Image.fromarray(pasted)


@dataclass
class Evaluation:
    """Per-sample scores (one row per calibration or ablation and triplet), the 5-panel grids,
    and why any metric was not computed."""

    samples: pd.DataFrame
    grids: list[tuple[str, str, Panels]]  # (ablation, triplet_id, the 5-panel figure)
    notes: dict[str, str]
    bootstrap_resamples: int = 1000  # of each identity figure's 95 % interval

    @property
    def metric_names(self) -> list[str]:
        """The scored columns: METRICS (those computed), then the second recogniser's."""
        return [c for c in self.samples.columns if c not in ROW_KEYS]

    def summary(self, by: tuple[str, ...] = ("ablation",)) -> pd.DataFrame:
        """Means per row kind (calibrations, then ablations; `by` source too: per source).
        Each identity figure (sim_ref, sim_gt, copy-paste, per recogniser) has beside it its n
        and 95 % bootstrap interval (`_n`, `_low`, `_high`); copy-paste is aggregated as
        MultiID-Bench does (`benchmark_mean`), with its median too."""
        grouped = self.samples.groupby(list(by), sort=False)
        table = grouped[self.metric_names].mean()
        for name in self.metric_names:
            if name.startswith(SCORED_IDENTITY):
                copy_paste = name.startswith("face_copy_paste")
                if copy_paste:
                    table[name] = grouped[name].agg(benchmark_mean)
                beside = figure_spread(grouped[name], copy_paste, self.bootstrap_resamples)
                at = table.columns.get_loc(name)
                for offset, (column, values) in enumerate(beside.items(), start=1):
                    table.insert(at + offset, f"{name}_{column}", values)
        table.insert(0, "samples", grouped.size())
        return table.reset_index()

    def readable_summary(self, by: tuple[str, ...] = ("ablation",)) -> pd.DataFrame:
        """The summary as people read it: each identity figure as `mean [low, high] n=N`."""
        table = self.summary(by)
        readable = table[[*by, "samples", *self.metric_names]].astype(object)
        for name in (n for n in self.metric_names if f"{n}_n" in table):
            readable[name] = [
                with_interval(*(row[f"{name}{end}"] for end in ("", "_low", "_high", "_n")))
                for row in table.to_dict(orient="records")
            ]
        return readable

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: `eval/<metric>` for the full model, `eval/<ablation>/<metric>`
        for each ablation and calibration; only those scored (`unscored` has the others)."""
        flat = {}
        for row in self.summary().to_dict(orient="records"):
            for metric in (c for c in row if c not in ("ablation", "samples")):
                value = float(row[metric])
                if math.isnan(value):
                    continue
                flat[f"eval/{row['ablation']}/{metric}"] = value
                if row["ablation"] == FULL:
                    flat[f"eval/{metric}"] = value
        return flat

    def unscored(self) -> dict[str, str]:
        """`eval/<ablation>/<metric>` -> why it has no value: no sample could be scored."""
        missing = {}
        for row in self.summary().to_dict(orient="records"):
            for metric in self.metric_names:
                if math.isnan(float(row[metric])):
                    # The longest name: `face_similarity_gt_<recogniser>` is `face_similarity_gt`.
                    base = max((name for name in NEEDS if metric.startswith(name)), key=len)
                    missing[f"eval/{row['ablation']}/{metric}"] = f"no sample had {NEEDS[base]}"
        return missing


class Evaluator:
    """The scorers: the identity recognisers (the first is `evaluation.face_model`), the pose
    estimator, CLIP if present."""

    def __init__(
        self,
        params: EvaluationParams,
        recognisers: dict[str, FaceAnalyzer],
        pose_estimator: RTMPoseEstimator,
        score_threshold: float,
        clip: ClipScorer | None,
        notes: dict[str, str],
    ) -> None:
        self.params = params
        self.recognisers = recognisers
        self.pose_estimator = pose_estimator
        self.score_threshold = score_threshold
        self.clip = clip
        self.notes = notes

    @classmethod
    def build(cls, params: EvaluationParams, priors: Priors) -> Evaluator:
        """The scorers of `priors`: `params.face_model` (required), `params.second_face_model`
        where its weights exist, the pose estimator, and CLIP where the models directory has
        it."""
        from perception.models import models_dir as resolve_models_dir

        recognisers = {params.face_model: priors.recogniser(params.face_model)}
        notes = {"face_recogniser": params.face_model}
        second = params.second_face_model
        if second and second != params.face_model:
            try:
                recognisers[second] = priors.recogniser(second)
                notes["second_face_recogniser"] = second
            except FileNotFoundError as e:  # "where its weights exist"
                notes["second_face_recogniser"] = f"skipped: {e}"
        clip_folder = resolve_models_dir(priors.models_dir) / params.clip_model
        clip = None
        if (clip_folder / "config.json").is_file():
            clip = ClipScorer(clip_folder)
            notes["clip_model"] = str(clip_folder)
        else:
            notes["clip_score"] = f"skipped: no CLIP model at {clip_folder}"
        return cls(
            params,
            recognisers,
            priors.pose_estimator(),
            priors.poses.score_threshold,
            clip,
            notes,
        )

    def identity_columns(self) -> dict[str, list[str]]:
        """Each recogniser's identity columns: IDENTITY_METRICS for `evaluation.face_model`,
        suffixed `_<name>` for the second one."""
        return {
            name: [f"{metric}{'' if i == 0 else f'_{name}'}" for metric in IDENTITY_METRICS]
            for i, name in enumerate(self.recognisers)
        }

    @property
    def columns(self) -> list[str]:
        """The samples table's scored columns: METRICS (without `clip_score` when no CLIP model
        is there: the notes say why), then the second recogniser's."""
        metrics = [m for m in METRICS if self.clip is not None or m != "clip_score"]
        second = list(self.identity_columns().values())[1:]
        return [*metrics, *(column for columns in second for column in columns)]

    def identities(self, sample: ValidationSample) -> list[Identity]:
        """The triplet's reference and target faces in each recogniser's space: the faces it
        finds where the faces stage found the character's, in the reference and the target
        frame."""
        found = []
        for recogniser in self.recognisers.values():
            reference = face_at(recogniser, sample.reference_frame, sample.reference_face_box)
            target = face_at(recogniser, sample.frame, sample.target_face_box)
            found.append(
                Identity(
                    reference.embedding if reference is not None else None,
                    target.embedding if target is not None else None,
                )
            )
        return found

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
        output_in_frame: PIL.Image.Image,
        identities: Sequence[Identity],
        condition: Pose | None,
    ) -> dict[str, float]:
        """Every metric of one output (bucket size, and in the frame at its size) against its
        triplet, given the triplet's faces per recogniser and the conditioning pose (both the
        same for every row)."""
        inside = sample.inside
        painted, target = np.asarray(output.convert("RGB")), np.asarray(sample.base)
        scores = {}
        recognisers = zip(self.recognisers.values(), self.identity_columns().values(), strict=True)
        for (recogniser, columns), faces in zip(recognisers, identities, strict=True):
            face = face_at(recogniser, output_in_frame, sample.target_face_box)
            embedding = face.embedding if face is not None else None
            values = identity_scores(embedding, faces, self.params.copy_paste_min_angle)
            scores |= dict(zip(columns, values, strict=True))
            if sample.source == "single":  # its target is the reference mirrored: no identity test
                scores |= {c: math.nan for c in columns if c.startswith(MOVIE_ONLY)}
            if sample.style == "anime":
                scores |= {c: math.nan for c in columns}
        scores |= {
            "pck_body": math.nan,
            "pck_face": math.nan,
            "saturation_ratio": saturation_ratio(painted, target, inside),
        }
        if self.clip is not None:
            scores["clip_score"] = self.clip(output, sample.prompt)
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

    def calibrations(self, sample: ValidationSample) -> dict[str, tuple[PIL.Image.Image, ...]]:
        """The calibration rows' outputs, in the bucket and back in the frame: the same round
        trip as a model's output, so a perfect output scores what the calibration shows."""
        pasted = sample.pasted_reference()
        bucket = fit_to_bucket(pasted, sample.placement, PIL.Image.Resampling.BICUBIC)
        return {
            "ground_truth": (sample.base, sample.in_frame(sample.base)),
            "paste": (bucket, sample.in_frame(bucket)),
        }

    @torch.no_grad()
    def evaluate(
        self,
        pipe: CharacterInpaintPipeline,
        samples: Sequence[ValidationSample],
        ablations: Sequence[str] | None = None,
        inference_steps: int | None = None,
        seed: int = 0,
        calibrate: bool = True,
    ) -> Evaluation:
        """Score the calibration rows (unless `calibrate` is off: they do not depend on the
        model, and a training run scores them once), then repaint every sample under every
        ablation (same seed: only the scales differ) and score the outputs."""
        ablations = list(ablations or self.params.ablations)
        rows, grids = [], []
        for sample in samples:
            identities = self.identities(sample)
            condition = self.conditioning_pose(sample)
            outputs = self.calibrations(sample) if calibrate else {}
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
                painted = pipe.paint(
                    sample.base,
                    sample.mask,
                    sample.prompt,
                    sample.reference,
                    sample.face_embedding,
                    sample.pose,
                    settings,
                )
                outputs[name] = (painted, sample.in_frame(painted))
            for name, (output, output_in_frame) in outputs.items():
                rows.append(
                    {"ablation": name, "triplet_id": sample.triplet_id, "source": sample.source}
                    | self.score(sample, output, output_in_frame, identities, condition)
                )
                pose_panel = sample.pose if name in ABLATIONS and ABLATIONS[name].pose else None
                panels = Panels(
                    sample.base, sample.mask, pose_panel, sample.reference, output, sample.prompt
                )
                grids.append((name, sample.triplet_id, panels))
        samples_table = pd.DataFrame(rows, columns=[*ROW_KEYS, *self.columns])
        return Evaluation(samples_table, grids, dict(self.notes), self.params.bootstrap_resamples)
