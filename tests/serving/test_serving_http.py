"""The real scoring server (`serving.app` on a free port): formats, determinism, a quiet start,
and every class of bad request (unknown keys included) answered 4xx with a one-line message
that starts with the field, server still up."""

from __future__ import annotations

import base64
import io
import re

import mlflow
import numpy as np
import PIL.Image
import pytest
import requests
from conftest import FAST, request_log
from test_serving_model import png_header

from serving.client import InpaintClient, make_row, predict_in_process, request_body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, "PNG")
    return b64(buffer.getvalue())


def test_a_started_server_says_what_it_serves_and_that_it_is_ready_and_nothing_else(server):
    lines = server.log_path.read_text().splitlines()
    ready = next(i for i, line in enumerate(lines) if line.endswith(" ready"))
    assert len(lines[: ready + 1]) == 2, lines[: ready + 1]  # no warnings, no uvicorn banner
    version = requests.get(server.url + "/version", timeout=5).json()["model_version"]
    assert lines[0].startswith(f"serving {version} ({server.model_uri}) at {server.url}: ")
    assert re.fullmatch(r"\S+ \S+ worker \d+ ready", lines[1])


def test_health_and_version(server):
    for path in ("/ping", "/health"):
        answer = requests.get(server.url + path, timeout=5)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    version = requests.get(server.url + "/version", timeout=5).json()
    assert version["mlflow"] == mlflow.__version__
    assert version["model_uri"] == server.model_uri  # the champion alias ...
    assert version["model_version"] == f"cameo-inpaint/{version['version']}"  # ... resolved
    assert version["name"] == "cameo-inpaint" and version["run_id"] and version["model_id"]


def test_a_wrong_method_or_path_answers_in_the_shape_of_every_other_error(server):
    wrong_method = requests.get(server.url + "/invocations", timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {
        "error_code": "METHOD_NOT_ALLOWED",
        "message": "GET /invocations: Method Not Allowed; this path answers POST with a JSON "
        "body in MLflow's scoring format",
    }
    unknown = requests.post(server.url + "/invocation", json={}, timeout=5)
    assert unknown.status_code == 404
    assert unknown.json() == {"error_code": "NOT_FOUND", "message": "POST /invocation: Not Found"}
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200  # still serving


def test_each_response_names_the_served_version(server, logged, good_row):
    [result] = InpaintClient(server.url).predict([good_row], FAST)
    assert result.model_version == f"cameo-inpaint/{logged.registered_model_version}"


@pytest.mark.parametrize("request_format", ["dataframe_split", "dataframe_records", "inputs"])
def test_good_request_in_every_format(server, scene, good_row, request_format):
    base, mask, _, _ = scene
    [result] = InpaintClient(server.url).predict([good_row], FAST, request_format)
    assert result.image.size == base.size
    outside = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(base)[outside])
    assert result.pose is not None and result.pose.size == base.size


def test_same_seed_same_image_over_http_and_in_process(server, pyfunc_model, good_row):
    client = InpaintClient(server.url)
    params = {**FAST, "seed": 1234}
    [over_http] = client.predict([good_row], params)
    [in_process] = predict_in_process(pyfunc_model, [good_row], params)
    assert np.array_equal(np.asarray(over_http.image), np.asarray(in_process.image))
    assert np.array_equal(np.asarray(over_http.pose), np.asarray(in_process.pose))
    [again] = client.predict([good_row], params)
    assert np.array_equal(np.asarray(again.image), np.asarray(over_http.image))
    [other_seed] = client.predict([good_row], {**FAST, "seed": 1235})
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(over_http.image))


def test_several_rows_over_http(server, scene):
    base, mask, reference, prompt = scene
    rows = [make_row(base, mask, reference, prompt, negative_prompt="blurry")] * 3
    results = InpaintClient(server.url).predict(rows, FAST)
    assert len(results) == 3
    assert all(np.array_equal(np.asarray(r.image), np.asarray(results[0].image)) for r in results)


def _bad_requests(scene) -> dict[str, tuple[object, str]]:
    """name -> (request body, what the error message must start with)."""
    base, mask, reference, prompt = scene
    row = make_row(base, mask, reference, prompt)
    gradient = np.asarray(base)
    without_mask = {k: v for k, v in row.items() if k != "mask"}
    misspelled = {("prompts" if k == "prompt" else k): v for k, v in row.items()}
    black = np.zeros(gradient.shape[:2], np.uint8)
    wide_mask = np.full((64, 80), 255, np.uint8)
    faceless = np.full((96, 96, 3), 180, np.uint8)
    return {
        "missing field": (
            request_body([without_mask]),
            "mask: missing; required: base, mask, reference, prompt",
        ),
        "misspelt column": (
            request_body([misspelled]),
            "prompts: unknown column; did you mean 'prompt'?",
        ),
        "misspelt optional column": (
            request_body([{**row, "negativ_prompt": "blurry"}], request_format="inputs"),
            "negativ_prompt: unknown column; did you mean 'negative_prompt'?",
        ),
        "misspelt param": (
            request_body([row], {"sed": 7}),
            "params.sed: unknown param; did you mean 'seed'?",
        ),
        "misspelt params key": (
            {**request_body([row]), "param": {"seed": 7}},
            "param: unknown key; did you mean 'params'?",
        ),
        "bad base64": (request_body([{**row, "base": "iVBOR%%w0K"}]), "base: not valid base64"),
        "not an image": (
            request_body([{**row, "reference": b64(b"GIF? no, plain text")}]),
            "reference: 19 bytes that are not a PNG or JPEG image",
        ),
        "decompression bomb": (
            request_body([{**row, "base": b64(png_header(5000, 5000))}]),
            "base: 5000x5000 is 25000000 pixels, over the limit of 4194304",
        ),
        "size mismatch": (
            request_body([{**row, "mask": png(wide_mask)}]),
            "mask: 80x64 differs from the base's 64x64",
        ),
        "empty mask": (request_body([{**row, "mask": png(black)}]), "mask: empty"),
        "reference without a face": (
            request_body([{**row, "reference": png(faceless)}]),
            "reference: no face found",
        ),
        "face embedding of the wrong size": (
            request_body([{**row, "face_embedding": [0.5] * 10}]),
            "face_embedding: expected 512 numbers, got 10",
        ),
        "face embedding of strings": (
            request_body([{**row, "face_embedding": ["a"] * 512}]),
            "face_embedding: expected a list of numbers",
        ),
        "prompt not a string": (
            request_body([{**row, "prompt": 5}], request_format="dataframe_records"),
            "prompt: expected a string, got int",
        ),
        "steps out of range": (
            request_body([row], {"num_inference_steps": 1000}),
            "params.num_inference_steps: 1000 is above the maximum 100",
        ),
        "negative scale": (
            request_body([row], {"face_scale": -1.0}),
            "params.face_scale: -1.0 is below the minimum 0.0",
        ),
        "param of the wrong type": (
            request_body([row], {"guidance_scale": "high"}),
            "params.guidance_scale: expected a number, got 'high'",
        ),
        "unknown output format": (
            request_body([row], {"output_format": "gif"}),
            "params.output_format: 'gif' is not one of ['png', 'jpeg']",
        ),
        "too many rows": (request_body([row] * 5), "rows: 5 rows; send 1 to 4"),
        "second row bad": (
            request_body([row, {**row, "mask": png(black)}]),
            "row 1: mask: empty",
        ),
        "empty prompt": (request_body([{**row, "prompt": "  "}]), "prompt: missing or empty"),
        "malformed JSON": ('{"dataframe_split": {"columns": ["base"', "body: not valid JSON"),
        "no data key": ({"rows": [row]}, "rows: unknown key"),
        "two data keys": (
            {**request_body([row]), "inputs": [row]},
            "body: send exactly one of dataframe_split, dataframe_records, inputs, instances",
        ),
        "ragged dataframe_split": (
            {"dataframe_split": {"columns": ["base", "mask"], "data": [["x"]]}},
            "dataframe_split.data[0]: 1 values for 2 columns",
        ),
    }


def pytest_generate_tests(metafunc):
    if "bad_request" in metafunc.fixturenames:
        from serving.client import demo_inputs

        cases = _bad_requests(demo_inputs())
        metafunc.parametrize("bad_request", list(cases.values()), ids=list(cases))


def test_bad_request_is_a_400_whose_message_is_one_line_starting_with_the_field(
    server, bad_request
):
    body, start = bad_request
    response = InpaintClient(server.url).invoke(body)
    assert response.status_code == 400, response.text[:500]
    error = response.json()
    message = error["message"]
    assert message.startswith(start), message[:600]
    assert "\n" not in message and len(message) < 300  # no request echo: that is in the log
    assert error["request_id"] == response.headers["X-Request-Id"]
    # The server's line for the request names the same status and reason.
    logged = request_log(server)[error["request_id"]]
    assert logged["status"] == "400" and start in logged["line"]


def test_request_id_is_the_clients_and_json_only(server, good_row):
    body = request_body([good_row], FAST)
    headers = {"Content-Type": "application/json", "X-Request-Id": "client-chosen-7"}
    response = requests.post(f"{server.url}/invocations", json=body, headers=headers, timeout=60)
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "client-chosen-7"
    assert request_log(server)["client-chosen-7"]["status"] == "200"
    csv = requests.post(
        f"{server.url}/invocations",
        data="base,mask\n",
        headers={"Content-Type": "text/csv"},
        timeout=60,
    )
    assert csv.status_code == 415
    assert csv.json()["message"] == "content-type: send application/json, not text/csv"


def test_server_keeps_serving_after_bad_requests(server, scene, good_row):
    assert server.process.poll() is None
    [result] = InpaintClient(server.url).predict([good_row], FAST)
    assert result.image.size == scene[0].size
