"""The pyfunc model in-process: log -> load -> predict, request checks, identity score, grid."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

import mlflow
import numpy as np
import PIL.Image
import pytest
import yaml
from conftest import DATASET_MD5, FAST
from skimage import data

from perception.faces import identity_score, load_face_analyzer
from serving.client import make_row, predict_in_process
from serving.manifest import check_base_models, record_base_models
from serving.registry import log_model, model_versions
from serving.schema import RequestError, ServingConfig, decode_image
from serving.served import CURRENT_REQUEST, RequestCancelled, ServedRequest
from training.grid import inpaint_grid
from training.tracking import CHAMPION, REGISTERED_MODEL

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and carries almost no pixel data: what a
    decompression bomb looks like before decoding."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_round_trip_log_load_predict(logged, pyfunc_model, scene, good_row):
    base, mask, _, _ = scene
    [result] = predict_in_process(pyfunc_model, [good_row], FAST)
    assert result.image.size == base.size
    outside = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(base)[outside])
    assert not np.array_equal(np.asarray(result.image)[~outside], np.asarray(base)[~outside])
    assert result.pose is not None and result.pose.size == base.size
    assert result.seconds > 0

    # Lineage: the model names its run and dataset; the registered version is tagged too.
    meta = pyfunc_model.metadata.metadata
    assert meta["training_run_id"] == logged.run_id
    assert meta["dataset_md5"] == DATASET_MD5
    [version] = [v for v in model_versions() if v.version == str(logged.registered_model_version)]
    assert version.dataset_md5 == DATASET_MD5 and CHAMPION in version.aliases
    # Only what inference reads was logged, not the optimizer state.
    files = mlflow.artifacts.list_artifacts(f"{logged.artifact_path}/artifacts/checkpoint")
    assert "training_state.pt" not in {Path(f.path).name for f in files}


def test_the_serving_settings_are_the_models_metadata_not_run_params(logged, pyfunc_model):
    from serving.artifacts import SETTINGS_METADATA

    settings = pyfunc_model.metadata.metadata[SETTINGS_METADATA]
    assert settings["profile"] == "tiny"
    assert "num_inference_steps" in settings["serving"]["params"]
    assert {"faces", "poses", "trust_remote_code"} <= settings.keys()
    # MLflow logs a model's `model_config` as run params; these settings are not one.
    assert mlflow.get_run(logged.run_id).data.params == {}
    flavor = pyfunc_model.metadata.flavors["python_function"]
    assert "config" not in flavor


def test_the_model_is_logged_from_code_and_loads_without_unpickling(
    logged, scene, good_row, monkeypatch
):
    flavor = mlflow.models.get_model_info(logged.model_uri).flavors["python_function"]
    assert Path(flavor["model_code_path"]).name == "logged_model.py"
    assert "python_model" not in flavor  # no python_model.pkl
    files = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(logged.model_uri)}
    assert "logged_model.py" in files and "python_model.pkl" not in files
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(logged.model_uri)
    [result] = predict_in_process(model, [good_row], FAST)
    assert result.image.size == scene[0].size


@pytest.mark.filterwarnings("ignore:.*input example was not provided")
def test_a_version_pickled_before_still_loads_and_is_listed_for_relogging(
    tracking, logged, pyfunc_model, scene, good_row, monkeypatch
):
    from click.testing import CliRunner

    from orchestration.cli.main import main
    from serving.artifacts import SETTINGS_METADATA
    from serving.model import CameoInpaintModel

    # What log_model did before models-from-code: the same model and files, cloudpickled.
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    settings = mlflow.models.get_model_info(logged.model_uri).metadata[SETTINGS_METADATA]
    with mlflow.start_run(run_name="logged the old way"):
        pickled = mlflow.pyfunc.log_model(
            name="model",
            python_model=CameoInpaintModel(),
            artifacts={"checkpoint": str(local / "artifacts" / "checkpoint")},
            model_config=settings,
            signature=pyfunc_model.metadata.signature,
            registered_model_name=REGISTERED_MODEL,
        )
    [result] = predict_in_process(pickled.model_uri, [good_row], FAST)
    assert result.image.size == scene[0].size

    version = str(pickled.registered_model_version)
    listing = CliRunner().invoke(main, ["model", "list"], catch_exceptions=False).output
    [line] = [x for x in listing.splitlines() if x.startswith(f"version {version} ")]
    assert line.endswith("logged as pickle")
    current = str(logged.registered_model_version)
    [line] = [x for x in listing.splitlines() if x.startswith(f"version {current} ")]
    assert line.endswith("logged as code")
    assert f"re-log version(s) {version}: pickled" in listing
    # Which is why: MLflow refuses to unpickle when told to.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(mlflow.MlflowException, match="pickle is disallowed"):
        mlflow.pyfunc.load_model(pickled.model_uri)


def test_signature_params_come_from_params_yaml(pyfunc_model):
    section = yaml.safe_load(PARAMS.read_text())["serving"]["params"]
    specs = {p.name: p for p in pyfunc_model.metadata.get_params_schema().params}
    assert {name: spec.default for name, spec in specs.items()} == {
        name: value["default"] for name, value in section.items()
    }
    inputs = pyfunc_model.metadata.get_input_schema()
    assert inputs.required_input_names() == ["base", "mask", "reference", "prompt"]


def test_several_rows_match_single_requests(pyfunc_model, scene):
    base, mask, reference, prompt = scene
    flipped = PIL.Image.fromarray(np.asarray(base)[::-1].copy())
    rows = [make_row(base, mask, reference, prompt), make_row(flipped, mask, reference, prompt)]
    batch = predict_in_process(pyfunc_model, rows, FAST)
    single = predict_in_process(pyfunc_model, rows[1:], FAST)
    assert len(batch) == 2
    assert np.array_equal(np.asarray(batch[1].image), np.asarray(single[0].image))
    assert not np.array_equal(np.asarray(batch[0].image), np.asarray(batch[1].image))


def test_given_pose_and_embedding_skip_extraction(pyfunc_model, scene):
    base, mask, _, prompt = scene
    blank = np.full((64, 64, 3), 200, np.uint8)  # a reference without a face
    pose = np.zeros((64, 64, 3), np.uint8)
    pose[20:44, 30:34] = (255, 0, 0)
    embedding = np.random.default_rng(0).standard_normal(512) * 20
    row = make_row(base, mask, blank, prompt, pose=pose, face_embedding=embedding)
    [result] = predict_in_process(pyfunc_model, [row], FAST)
    assert np.array_equal(np.asarray(result.pose), pose)
    [other] = predict_in_process(pyfunc_model, [row], {**FAST, "controlnet_scale": 0.0})
    assert other.pose is None
    assert not np.array_equal(np.asarray(result.image), np.asarray(other.image))


def test_a_request_cancelled_inside_a_step_stops_there_and_leaves_no_hooks(pyfunc_model, good_row):
    pipe = pyfunc_model.unwrap_python_model().pipeline
    request = ServedRequest("cancelled", deadline=math.inf)

    def client_goes_away(module, args):  # as the endpoint does, between ControlNet and U-Net
        request.cancel("the client went away")

    handle = pipe.unet.register_forward_pre_hook(client_goes_away)
    token = CURRENT_REQUEST.set(request)
    try:
        with pytest.raises(RequestCancelled, match="the client went away"):
            predict_in_process(pyfunc_model, [good_row], FAST)
    finally:
        CURRENT_REQUEST.reset(token)
        handle.remove()
    assert request.steps == 0
    networks = (pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder, pipe.body_encoder)
    assert not any(module._forward_pre_hooks for net in networks for module in net.modules())
    assert predict_in_process(pyfunc_model, [good_row], FAST)[0].image.size == (64, 64)


def test_client_errors_are_invalid_parameter_value(pyfunc_model, scene):
    base, mask, reference, prompt = scene
    empty = PIL.Image.new("L", base.size, 0)
    with pytest.raises(mlflow.MlflowException, match="mask: empty") as raised:
        predict_in_process(pyfunc_model, [make_row(base, empty, reference, prompt)], FAST)
    assert raised.value.get_http_status_code() == 400
    rows = [make_row(base, mask, reference, prompt)] * 2 + [
        make_row(base, empty, reference, prompt)
    ]
    with pytest.raises(mlflow.MlflowException, match="row 2: mask: empty"):
        predict_in_process(pyfunc_model, rows, FAST)


def test_declared_size_is_refused_before_decoding():
    import base64

    bomb = base64.b64encode(png_header(10_000, 10_000)).decode()
    with pytest.raises(RequestError, match=r"10000x10000 is 100000000 pixels, over the limit"):
        decode_image("base", bomb, max_pixels=2048 * 2048, min_side=64)
    # Beyond PIL's own limit, PIL refuses at the header already.
    huge = base64.b64encode(png_header(40_000, 40_000)).decode()
    with pytest.raises(RequestError, match=r"base: image too large .*1600000000 pixels"):
        decode_image("base", huge, max_pixels=2048 * 2048, min_side=64)
    # The same header under the limit is decoded, and its missing pixel data found corrupt.
    small = base64.b64encode(png_header(100, 100)).decode()
    with pytest.raises(RequestError, match="corrupt"):
        decode_image("base", small, max_pixels=2048 * 2048, min_side=64)
    jpeg = io.BytesIO()
    PIL.Image.new("RGB", (80, 64)).save(jpeg, "JPEG")
    image = decode_image("base", base64.b64encode(jpeg.getvalue()).decode(), 2048**2, 64)
    assert image.size == (80, 64)


def test_identity_score_reads_the_face_inside_the_mask():
    analyzer = load_face_analyzer("tiny")
    astronaut = PIL.Image.fromarray(data.astronaut()).resize((160, 160))
    [face] = analyzer.detect(np.asarray(astronaut))
    reference = face.embedding * face.raw_norm  # raw scale, as encode_face returns it
    inside = np.zeros((160, 160), bool)
    x1, y1, x2, y2 = face.bbox.astype(int)
    inside[y1:y2, x1:x2] = True
    assert identity_score(analyzer, reference, astronaut, inside) == pytest.approx(1.0, abs=1e-5)
    # The same face outside the painted region is not the painted character.
    assert identity_score(analyzer, reference, astronaut, ~inside) is None


def test_serving_config_round_trips_and_checks_ranges():
    section = yaml.safe_load(PARAMS.read_text())["serving"]
    config = ServingConfig.from_params(section)
    assert ServingConfig.from_params(config.to_dict()) == config
    assert (
        config.inference_params({}).num_inference_steps
        == section["params"]["num_inference_steps"]["default"]
    )
    with pytest.raises(RequestError, match=r"params.face_scale: 3.0 is above the maximum 2.0"):
        config.inference_params({"face_scale": 3.0})
    broken = {**section, "params": {**section["params"], "steps": {"default": 3}}}
    with pytest.raises(ValueError, match=r"unknown \['steps'\]"):
        ServingConfig.from_params(broken)


def test_full_profile_base_models_are_checked(tmp_path):
    models = tmp_path / "models"
    (models / "sdxl" / "unet").mkdir(parents=True)
    (models / "sdxl" / "unet" / "config.json").write_text("{}")
    (models / "pose.onnx").write_bytes(b"onnx")
    manifest = record_base_models(models, ["sdxl", "pose.onnx"])
    check_base_models(models, manifest)
    (models / "pose.onnx").write_bytes(b"ONNX")  # same size, other content
    (models / "sdxl" / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as raised:
        check_base_models(models, manifest)
    assert "sdxl/unet/config.json is missing" in str(raised.value)
    assert "pose.onnx has another sha256" in str(raised.value)
    check_base_models(models, {"pose.onnx": manifest["pose.onnx"]}, verify_checksums=False)
    with pytest.raises(FileNotFoundError, match="base model InternViT"):
        record_base_models(models, ["InternViT"])


def test_log_model_refuses_a_profile_that_does_not_fit(tracking, checkpoint):
    with pytest.raises(ValueError, match="holds a 'tiny' checkpoint"):
        log_model(checkpoint, profile="full")
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_model(checkpoint, profile="tiny", registered_model_name=REGISTERED_MODEL)


def test_grid_has_five_titled_panels_and_the_caption(scene):
    base, mask, reference, _ = scene
    caption = "a long prompt " * 40
    grid = inpaint_grid(base, mask, None, reference, base, caption, panel_height=128)
    pixels = np.asarray(grid)
    # Five panels of 128 px (the reference is square too) plus gaps.
    assert grid.width >= 5 * 128 and grid.height > 128
    panel_row = pixels[grid.height // 3]
    assert (panel_row != 255).any(axis=-1).sum() >= 4 * 128
    caption_rows = pixels[-30:]
    assert (caption_rows < 128).any()  # the caption's text is drawn
    short = inpaint_grid(base, mask, None, reference, base, "short", panel_height=128)
    assert grid.height > short.height  # long captions wrap onto more lines


def test_a_final_checkpoint_logged_later_names_the_run_that_trained_it(tmp_path):
    """`final/` names no run (dvc.lock reproduces); the `run.json` beside it does."""
    from serving.registry import training_run
    from training.model import CheckpointInfo

    final = tmp_path / "final"
    final.mkdir()
    info = CheckpointInfo(config="tiny", base_seed=0, step=24, dataset_md5=DATASET_MD5)
    assert training_run(final, info) is None
    record = {"run_id": "abc123", "experiment_id": "1", "dataset_md5": DATASET_MD5}
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert training_run(final, info) == "abc123"
    # A record of another dataset is not this checkpoint's.
    (tmp_path / "run.json").write_text(json.dumps({**record, "dataset_md5": "other.dir"}))
    assert training_run(final, info) is None
    # A step checkpoint names its run itself.
    step = CheckpointInfo("tiny", 0, 8, run_id="def456", dataset_md5=DATASET_MD5)
    assert training_run(tmp_path / "checkpoint-000008", step) == "def456"
