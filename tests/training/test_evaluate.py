"""Evaluation: each metric on constructed cases with known answers, and the tiny model's
evaluation (training-time and `evaluate_logged_model`) logging every metric to MLflow."""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch
from skimage import data

from assets.sample_movie import _portrait
from core.params import ParamsError
from orchestration.params import load_params
from perception.priors import Priors
from tests.onnx_faces import save_model_pack
from training.evaluate import (
    ABLATIONS,
    CALIBRATIONS,
    IDENTITY_METRICS,
    METRICS,
    NEEDS,
    Evaluation,
    Evaluator,
    ValidationSample,
)
from training.evaluation_log import NOT_SCORED_FILE, TAG_CHARS
from training.metrics import ClipScorer, benchmark_mean, mean_saturation, pck, saturation_ratio
from training.params import EvaluationParams

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("temp_tracking")


def save_tiny_clip(folder: Path) -> Path:
    """A random CLIP model, its processor and a byte-level tokenizer in transformers' layout."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from training.text import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **layers,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**layers, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_pck_of_a_shifted_pose_drops_by_the_shifted_share():
    rng = np.random.default_rng(0)
    # Visible target keypoints spread over a 100 x 200 box: alpha 0.1 allows 20 pixels.
    target = np.column_stack([rng.uniform(0, 100, 20), rng.uniform(0, 200, 20)]).astype(np.float32)
    target[0], target[1] = (0, 0), (100, 200)
    scores = np.ones(20, np.float32)
    assert pck(target, scores, target, scores, 0.1, 0.3) == 1.0
    assert pck(target + 10, scores, target, scores, 0.1, 0.3) == 1.0  # 14.1 px off
    assert pck(target + 15, scores, target, scores, 0.1, 0.3) == 0.0  # 21.2 px off
    shifted = target.copy()
    shifted[:5] += (0, 30)  # a quarter of the keypoints 30 px off
    assert pck(shifted, scores, target, scores, 0.1, 0.3) == pytest.approx(0.75)
    # A keypoint the output does not find is a miss; one the target lacks does not count.
    weak = scores.copy()
    weak[5] = 0.1
    assert pck(target, weak, target, scores, 0.1, 0.3) == pytest.approx(19 / 20)
    assert pck(shifted, scores, target, np.where(np.arange(20) < 5, 0.0, 1.0), 0.1, 0.3) == 1.0
    assert math.isnan(pck(target, scores, target, np.zeros(20), 0.1, 0.3))


def test_saturation_ratio_of_a_saturated_copy():
    inside = np.zeros((20, 20), bool)
    inside[5:15, 5:15] = True

    def hsv_image(saturation: float) -> np.ndarray:
        red = colorsys.hsv_to_rgb(0.0, saturation, 0.8)
        image = np.full((20, 20, 3), 128, np.uint8)  # grey outside: saturation 0
        image[inside] = np.round(np.array(red) * 255).astype(np.uint8)
        return image

    target, saturated = hsv_image(0.3), hsv_image(0.6)
    assert mean_saturation(target, inside) == pytest.approx(0.3, abs=0.01)
    assert saturation_ratio(saturated, target, inside) == pytest.approx(2.0, abs=0.03)
    assert saturation_ratio(target, target, inside) == 1.0
    assert math.isnan(saturation_ratio(target, np.full((20, 20, 3), 128, np.uint8), inside))


TINY_BUCKETS = [(64, 64), (48, 80), (80, 48), (48, 64), (64, 48)]  # params.yaml's tiny


def in_a_frame(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`image` resized into `box` (x1, y1, x2, y2) of a grey 640x360 frame."""
    x1, y1, x2, y2 = box
    frame = np.full((360, 640, 3), 90, np.uint8)
    frame[y1:y2, x1:x2] = np.asarray(PIL.Image.fromarray(image).resize((x2 - x1, y2 - y1)))
    return frame


def photo_sample(
    tmp_path: Path,
    target: np.ndarray,
    reference: np.ndarray,
    buckets: list[tuple[int, int]] = TINY_BUCKETS,
    box: tuple[int, int, int, int] = (200, 20, 440, 340),
    face_boxes: tuple[list[float], list[float]] | None = None,
    source: str = "movie",
    style: str = "photo",
) -> ValidationSample:
    """A validation triplet on disk, read back as the evaluation reads one: `target` placed in
    a 640x360 frame inside `box`, the mask a margin around it; `reference` placed in another
    frame, and as the reference crop. The face boxes (reference, target) are dlib's, as a
    faces stage would find them, unless given."""
    x1, y1, x2, y2 = box
    frame, reference_frame = in_a_frame(target, box), in_a_frame(reference, (60, 30, 300, 330))
    if face_boxes is None:
        dlib = Priors("tiny").dlib_faces()
        face_boxes = tuple(
            dlib.detect(image)[0].bbox.tolist() for image in (reference_frame, frame)
        )
    mask = np.zeros((360, 640), np.uint8)
    mask[max(y1 - 10, 0) : y2, max(x1 - 20, 0) : x2 + 20] = 255
    files = {
        "target": frame,
        "target_mask": mask,
        "target_pose": np.zeros_like(frame),
        "reference": reference_frame,
        "reference_crop": reference,
    }
    for name, image in files.items():
        PIL.Image.fromarray(image).save(tmp_path / f"{name}.png")
    row = SimpleNamespace(
        triplet_id="photo",
        source=source,
        prompt="a person",
        face_embedding=np.ones(512, np.float32) / np.sqrt(512),
        face_embedding_raw_norm=25.0,
        face_dropped=False,
        style=style,
        reference_bbox=face_boxes[0],
        target_bbox=face_boxes[1],
        **{name: f"{name}.png" for name in files},
    )
    return ValidationSample.from_row(row, tmp_path, buckets)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    """dlib scoring, no second recogniser, the tiny pose estimator, no CLIP."""
    params = EvaluationParams(second_face_model="")
    return Evaluator.build(params, Priors("tiny", models_dir=Path("no-models")))


def score_calibrations(evaluator: Evaluator, sample: ValidationSample) -> dict[str, dict]:
    identities = evaluator.identities(sample)
    condition = evaluator.conditioning_pose(sample)
    return {
        name: evaluator.score(sample, bucket, in_frame, identities, condition)
        for name, (bucket, in_frame) in evaluator.calibrations(sample).items()
    }


def test_calibration_rows_take_the_models_path_and_can_fail(evaluator, tmp_path):
    """The calibration rows go through the bucket round trip a model's output takes (here 0.75x),
    so the target itself scores sim_gt just under 1, not 1 by construction. Reference and
    target from one photograph (her mirrored crop) lie closer than copy_paste_min_angle:
    copy-paste is not scored. With another person as the target, the ground-truth row's sim_ref
    falls below the triplets' identity bar (the calibration shows two people) and copy-paste
    is scored: the target near -1, the pasted reference near +1."""
    astronaut, round_trip = data.astronaut(), [(272, 480)]
    # The reference: the singles' crop of the astronaut, mirrored (another picture of her);
    # the target: her portrait, rescaled.
    mirrored = np.ascontiguousarray(astronaut[:400, 460:60:-1])
    sample = photo_sample(tmp_path, astronaut, mirrored, round_trip)
    scores = score_calibrations(evaluator, sample)
    truth, paste = scores["ground_truth"], scores["paste"]
    assert truth["face_found"] == paste["face_found"] == 1.0
    assert 0.98 < truth["face_similarity_gt"] < 1.0
    assert math.isnan(truth["face_copy_paste"]) and math.isnan(paste["face_copy_paste"])
    assert paste["face_similarity"] > paste["face_similarity_gt"]
    assert truth["saturation_ratio"] == pytest.approx(1.0, abs=0.05)
    assert "clip_score" not in truth  # not computed: no column, and the notes say why
    assert evaluator.notes["clip_score"].startswith("skipped: no CLIP model at")
    assert evaluator.notes["face_recogniser"] == "dlib"
    # Where the conditioning keypoints are visible, the same image finds each of them.
    identities, condition = evaluator.identities(sample), evaluator.conditioning_pose(sample)
    itself = evaluator.score(sample, sample.base, sample.frame, identities, condition)
    assert all(math.isnan(itself[k]) or itself[k] == 1.0 for k in ("pck_body", "pck_face"))

    (tmp_path / "other").mkdir()
    other = photo_sample(tmp_path / "other", astronaut, _portrait("grace_hopper"), round_trip)
    mismatched = score_calibrations(evaluator, other)
    bar = load_params(REPO / "params.yaml", "tiny").triplets.min_identity_similarity
    assert mismatched["ground_truth"]["face_similarity"] < bar
    # Measured: -0.79 and +0.56, not -1 and +1: the round trip moves the descriptors.
    assert mismatched["ground_truth"]["face_copy_paste"] < -0.5
    assert mismatched["paste"]["face_copy_paste"] > 0.4


def test_a_single_is_scored_on_sim_ref_only(evaluator, tmp_path):
    """A single's target is its own reference, mirrored: sim_gt and copy-paste would measure
    the mirror, not identity, so they are not scored there."""
    astronaut = data.astronaut()
    mirrored = np.ascontiguousarray(astronaut[:400, 460:60:-1])
    sample = photo_sample(tmp_path, astronaut, mirrored, [(272, 480)], source="single")
    truth = score_calibrations(evaluator, sample)["ground_truth"]
    assert truth["face_found"] == 1.0 and truth["face_similarity"] > 0.9
    assert math.isnan(truth["face_similarity_gt"]) and math.isnan(truth["face_copy_paste"])


def test_an_anime_triplet_scores_no_identity(evaluator, tmp_path):
    """No recogniser here tells anime faces apart: an anime triplet's identity columns are
    not scored, face_found included, and say why where no sample had them."""
    astronaut = data.astronaut()
    sample = photo_sample(tmp_path, astronaut, astronaut[:400, 60:460], [(272, 480)], style="anime")
    truth = score_calibrations(evaluator, sample)["ground_truth"]
    identity = [c for c in truth if c.startswith(IDENTITY_METRICS)]
    assert identity and all(math.isnan(truth[c]) for c in identity)
    assert "anime" in NEEDS["face_found"]


def test_an_output_is_scored_in_the_frame_at_its_own_size(evaluator, tmp_path):
    """A bucket-size output goes back into the frame: dlib finds no face in the half-size
    bucket, and the target's face once it is back in the frame."""
    astronaut = data.astronaut()
    sample = photo_sample(tmp_path, astronaut, astronaut[:400, 60:460], [(180, 320)])
    assert evaluator.recognisers["dlib"].detect(np.asarray(sample.base)) == []
    identities = evaluator.identities(sample)
    scores = evaluator.score(sample, sample.base, sample.in_frame(sample.base), identities, None)
    assert scores["face_found"] == 1.0 and scores["face_similarity_gt"] > 0.9
    # A grey output has no face: not found, no similarity.
    grey = PIL.Image.new("RGB", sample.base.size, (128, 128, 128))
    scores = evaluator.score(sample, grey, sample.in_frame(grey), identities, None)
    assert scores["face_found"] == 0.0 and math.isnan(scores["face_similarity"])
    assert math.isnan(scores["face_copy_paste"])


def test_in_frame_puts_the_output_back_where_the_bucket_took_it(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    boxes = ([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0])
    # A square bucket cuts the 640x360 frame's sides: left blank, not the target's pixels.
    sample = photo_sample(tmp_path, target, target, [(180, 180)], (10, 40, 400, 340), boxes)
    back = np.asarray(sample.in_frame(sample.base)).astype(int)
    frame = np.asarray(sample.frame).astype(int)
    left = (640 - 360) // 2  # the bucket saw columns 140..500
    assert (back[:, :left] == 255).all() and (back[:, 640 - left :] == 255).all()
    seen = (slice(None), slice(left, 640 - left))
    assert np.abs(back[seen] - frame[seen]).mean() < 40  # down to 180 px and back up


def test_a_second_recogniser_scores_the_reference_crop_and_the_output(tmp_path):
    save_model_pack(tmp_path / "models", name="second")
    rng = np.random.default_rng(0)
    square = rng.integers(200, 256, (96, 96, 3), dtype=np.uint8)  # the tiny detector's "face"
    params = EvaluationParams(second_face_model="second")
    evaluator = Evaluator.build(params, Priors("tiny", models_dir=tmp_path / "models"))
    assert evaluator.notes["second_face_recogniser"] == "second"
    assert evaluator.columns[-4:] == [
        "face_similarity_second",
        "face_similarity_gt_second",
        "face_copy_paste_second",
        "face_found_second",
    ]
    reference = np.zeros((160, 160, 3), np.uint8)
    reference[32:128, 32:128] = square
    # Where the square lands in each frame: the reference's is scaled into (60, 30, 300, 330).
    boxes = ([108.0, 90.0, 252.0, 270.0], [272.0, 132.0, 368.0, 228.0])
    sample = photo_sample(tmp_path, square, reference, [(360, 640)], (272, 132, 368, 228), boxes)
    identities = evaluator.identities(sample)
    assert identities[1].reference is not None and identities[1].target is not None
    scores = evaluator.score(sample, sample.base, sample.frame, identities, None)
    assert scores["face_found_second"] == 1.0 and scores["face_found"] == 0.0  # dlib: no face
    assert scores["face_similarity_gt_second"] == pytest.approx(1.0, abs=1e-5)
    # Where the second recogniser's weights are missing, it is skipped and said why.
    without = Evaluator.build(
        EvaluationParams(second_face_model="antelopev2"), Priors("tiny", models_dir=tmp_path)
    )
    assert list(without.recognisers) == ["dlib"]
    assert without.columns == [m for m in METRICS if m != "clip_score"]  # and no CLIP model
    assert without.notes["second_face_recogniser"].startswith("skipped: no insightface ONNX")


def test_clip_score_reads_a_saved_model(tmp_path):
    folder = save_tiny_clip(tmp_path / "models" / "clip-vit-large-patch14")
    scorer = ClipScorer(folder)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    prompt = "A person wearing a red coat walks through a grey street. " * 20  # over 77 tokens
    inputs = scorer.processor(
        text=[prompt], images=[image], return_tensors="pt", padding=True, truncation=True
    )
    with torch.no_grad():
        output = scorer.model(**inputs)
    cosine = float(torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds))
    assert scorer(image, prompt) == pytest.approx(100 * max(cosine, 0.0), abs=1e-4)
    evaluator = Evaluator.build(EvaluationParams(), Priors("tiny", models_dir=tmp_path / "models"))
    assert evaluator.clip is not None and "clip_score" not in evaluator.notes


def test_a_metric_no_sample_could_score_is_not_a_metric_but_a_reason():
    import pandas as pd

    from training.evaluate import NEEDS, Evaluation

    columns = ["ablation", "triplet_id", "face_similarity", "face_found", "pck_face_dlib2"]
    rows = [
        ["full", "a", math.nan, 0.0, 0.5],
        ["full", "b", math.nan, 0.0, math.nan],
        ["paste", "a", 0.5, 1.0, math.nan],
        ["paste", "b", math.nan, 0.0, math.nan],
    ]
    evaluation = Evaluation(pd.DataFrame(rows, columns=columns), [], {})
    metrics = evaluation.metrics()
    assert not any(math.isnan(value) for value in metrics.values())
    assert metrics["eval/face_found"] == 0.0 and "eval/face_similarity" not in metrics
    assert metrics["eval/paste/face_similarity"] == 0.5  # the mean of those scored
    assert metrics["eval/full/pck_face_dlib2"] == 0.5
    assert evaluation.unscored() == {
        "eval/full/face_similarity": f"no sample had {NEEDS['face_similarity']}",
        "eval/paste/pck_face_dlib2": f"no sample had {NEEDS['pck_face']}",
    }


def test_evaluation_params_are_validated_with_params_yaml(tmp_path):
    values = load_params(REPO / "params.yaml", "tiny")
    assert values.evaluation.min_face_similarity is None
    assert values.evaluation.face_model == "dlib"  # on every profile
    assert load_params(REPO / "params.yaml", "full").evaluation.face_model == "dlib"
    assert load_params(REPO / "params.yaml", "full").evaluation.min_face_similarity == 0.91
    text = (REPO / "params.yaml").read_text()
    bad = tmp_path / "params.yaml"
    bad.write_text(text.replace("pck_alpha: 0.1", "pck_alpha: 2"))
    with pytest.raises(ParamsError, match=r"evaluation.pck_alpha: must be <= 1"):
        load_params(bad, "tiny")
    bad.write_text(text.replace("[inpainting, face, face_body, full]", "[inpainting, pose]"))
    with pytest.raises(
        ParamsError, match=r"evaluation.ablations.1: must be 'inpainting'.*got 'pose'"
    ):
        load_params(bad, "tiny")
    assert list(EvaluationParams().ablations) == list(ABLATIONS)


@pytest.mark.slow
def test_the_tiny_model_is_evaluated_in_training_and_as_a_logged_model(triplets_root, tmp_path):
    """Training logs the full model's metrics at each validation step; `evaluate_logged_model`
    logs every ablation's, linked to the logged model, with both tables and the grids."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from serving.registry import log_model
    from training.evaluation_log import evaluate_logged_model
    from training.loop import train

    models = tmp_path / "models"
    save_tiny_clip(models / "clip-vit-large-patch14")
    values = load_params(REPO / "params.yaml", "tiny")
    params = values.training.updated(
        "training", output_dir=str(tmp_path / "out"), max_steps=2, validate_every=2
    )
    result = train(
        params,
        data_root=triplets_root,
        models_dir=models,
        lock_file=None,
        show_progress=False,
        priors=values.priors(models),
        evaluation=values.evaluation,
    )
    client = MlflowClient()
    run_id = result.run_id
    not_scored = mlflow.artifacts.load_dict(f"runs:/{run_id}/{NOT_SCORED_FILE}")
    for metric in METRICS:
        steps = [m.step for m in client.get_metric_history(run_id, f"eval/{metric}")]
        assert steps == [0, 2] or not_scored[f"eval/full/{metric}"].startswith("no sample")
    assert not math.isnan(client.get_metric_history(run_id, "eval/clip_score")[0].value)

    with mlflow.start_run(run_id=run_id):
        info = log_model(result.final_dir, profile="tiny")
    evaluation, evaluated_run = evaluate_logged_model(
        info.model_uri,
        values.training,
        values.evaluation,
        values.faces,
        values.poses,
        data_root=triplets_root,
        models_dir=models,
    )
    assert evaluated_run == run_id
    assert list(evaluation.summary().ablation) == [*CALIBRATIONS, *ABLATIONS]
    logged = client.get_run(run_id).data.metrics
    unscored = evaluation.unscored()
    for row in (*CALIBRATIONS, *ABLATIONS):
        for metric in METRICS:
            assert (f"eval/{row}/{metric}" in logged) != (f"eval/{row}/{metric}" in unscored)
    assert not any(math.isnan(value) for value in logged.values())
    # The metrics are linked to the logged model.
    model_metrics = {m.key for m in client.get_logged_model(info.model_id).metrics or []}
    assert {f"eval/{a}/face_found" for a in ABLATIONS} <= model_metrics
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/samples.json", "evaluation/ablations.json"} <= artifacts
    table = mlflow.load_table("evaluation/ablations.json", run_ids=[run_id])
    # Training's validations (steps 0 and 2) and the evaluation (the trained step, 2).
    assert sorted(set(table.step)) == [0, 2]
    # Training scores the full model at each validation and the calibrations, which do not
    # depend on the model, once (step 0); the evaluation every ablation and the calibrations.
    assert len(table) == (len(CALIBRATIONS) + 1) + 1 + len(CALIBRATIONS) + len(ABLATIONS)
    for row in CALIBRATIONS:
        history = client.get_metric_history(run_id, f"eval/{row}/face_found")
        assert sorted(m.step for m in history) == [0, 2], row  # training's step 0, evaluation
    tags = client.get_run(run_id).data.tags
    assert tags["evaluation.model_uri"] == info.model_uri
    # What no sample could be scored for is named, with the reason, in the artifact; in a short
    # tag; and per row in the table, whose first columns say which row is which.
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/{NOT_SCORED_FILE}") == unscored
    if unscored:
        tag = tags["evaluation.not_scored"]
        assert tag.startswith(f"{len(unscored)} not scored: ") and len(tag) <= TAG_CHARS
    assert list(table.columns[:2]) == ["step", "ablation"]
    for key in unscored:
        _, row, metric = key.split("/")
        assert metric in table[table.ablation == row].not_scored.iloc[-1]
    # Every row's sheet, under a short name; the model's figures are training's.
    sheets = {a.path for a in client.list_artifacts(run_id, "grids/step-2")}
    assert {
        f"grids/step-2/{t}-{row}.png"
        for t in evaluation.samples.triplet_id.unique()
        for row in (*CALIBRATIONS, *ABLATIONS)
    } <= sheets
    assert max(len(path) for path in sheets) < 60


def test_the_evaluation_table_per_source():
    """Each source's triplets (movie, single, synthetic) averaged apart, per row kind; the
    source is a key of the row, not a metric."""
    samples = pd.DataFrame(
        {
            "ablation": ["paste", "full", "full", "full"],
            "triplet_id": ["m", "m", "s", "y"],
            "source": ["movie", "movie", "synthetic", "synthetic"],
            "face_found": [1.0, 1.0, 0.0, 1.0],
        }
    )
    evaluation = Evaluation(samples, [], {})
    assert evaluation.metric_names == ["face_found"]
    table = evaluation.summary(by=("source", "ablation")).set_index(["source", "ablation"])
    assert table.loc[("synthetic", "full"), "face_found"] == 0.5
    assert table.loc[("synthetic", "full"), "samples"] == 2
    assert table.loc[("movie", "paste"), "face_found"] == 1.0


def test_copy_paste_is_aggregated_as_the_benchmark_does():
    """MultiID-Bench's aggregate: the mean within 1.5 x IQR of the quartiles (an outlier out,
    NaN ignored), beside the median and n in the summary and the MLflow metrics."""
    scores = [0.1, 0.2, 0.15, 0.12, 5.0, math.nan]
    assert benchmark_mean(pd.Series(scores)) == pytest.approx(np.mean([0.1, 0.2, 0.15, 0.12]))
    assert math.isnan(benchmark_mean(pd.Series([math.nan])))
    samples = pd.DataFrame(
        {
            "ablation": ["full"] * len(scores),
            "triplet_id": [f"t{i}" for i in range(len(scores))],
            "face_copy_paste": scores,
            "face_found": 1.0,
        }
    )
    evaluation = Evaluation(samples, [], {})
    (row,) = evaluation.summary().to_dict(orient="records")
    assert row["face_copy_paste"] == pytest.approx(0.1425)
    assert row["face_copy_paste_median"] == pytest.approx(0.15)
    assert row["face_copy_paste_n"] == 5 and row["samples"] == 6
    # Its 95 % bootstrap interval holds it; a fixed seed gives the same interval every time.
    assert row["face_copy_paste_low"] <= 0.1425 <= row["face_copy_paste_high"]
    assert evaluation.summary().equals(evaluation.summary())
    metrics = evaluation.metrics()
    assert metrics["eval/face_copy_paste_n"] == 5 and metrics["eval/full/face_copy_paste_median"]
    assert "eval/face_copy_paste_high" in metrics
    (readable,) = evaluation.readable_summary().to_dict(orient="records")
    low, high = row["face_copy_paste_low"], row["face_copy_paste_high"]
    assert (
        readable["face_copy_paste"] == f"{row['face_copy_paste']:.3f} [{low:.3f}, {high:.3f}] n=5"
    )
