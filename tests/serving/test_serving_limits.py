"""A request past its timeout, or abandoned by its client, stops its work within about a second,
inside a denoising step if need be (its log line comes when its work has ended), and the next
request is answered as usual (`limited_server`, whose timeout is 2 s)."""

from __future__ import annotations

import time

import pytest
import requests
from conftest import FAST, LIMITED_TIMEOUT_S, request_log

from serving.client import make_row, request_body

# 100 steps at 512x512 take minutes on the tiny model (about a second a step): far past the
# 2 s timeout, so only a stopped computation ends within STOP_S.
LONG = {"num_inference_steps": 100}
STOP_S = 60  # generous for a loaded machine: the stop and the answer
NORMAL_S = 60  # the same for a normal request, which takes about a second
# One step at 768x768: past the 2 s timeout in its VAE encoding or its step, whose
# longest single operation takes about 0.7 s on two shared cores.
ONE_STEP = {"num_inference_steps": 1}
ONE_LONG_STEP_SIDE = 768
STOPPED_WITHIN_S = 1.5  # about a second after the deadline: that operation and the unwinding


def resized_row(scene, side: int) -> dict:
    base, mask, reference, prompt = scene
    return make_row(base.resize((side, side)), mask.resize((side, side)), reference, prompt)


@pytest.fixture(scope="module")
def long_row(scene):
    return resized_row(scene, 512)


def post(server, body, request_id: str, timeout_s: float = 120) -> requests.Response:
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    return requests.post(f"{server.url}/invocations", json=body, headers=headers, timeout=timeout_s)


def logged(server, request_id: str) -> dict[str, str]:
    """The request's log line, which the server writes once its work has ended."""
    deadline = time.monotonic() + STOP_S
    while request_id not in (lines := request_log(server)):
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.2)
    return lines[request_id]


def test_a_request_past_its_timeout_gets_504_and_the_next_is_answered(
    limited_server, long_row, good_row
):
    long = post(limited_server, request_body([long_row], LONG), "past-timeout")
    assert long.status_code == 504, long.text[:300]
    message = long.json()["message"]
    expected = f"timeout: no answer within {LIMITED_TIMEOUT_S} s (serving.timeout_s)"
    assert message.startswith(expected)
    stopped = logged(limited_server, "past-timeout")
    assert stopped["status"] == "504" and stopped["stopped"] == "'timeout'"
    assert int(stopped["steps"]) < LONG["num_inference_steps"]

    started = time.monotonic()
    normal = post(limited_server, request_body([good_row], FAST), "after-timeout")
    assert normal.status_code == 200, normal.text[:300]
    assert time.monotonic() - started < NORMAL_S
    assert logged(limited_server, "after-timeout")["status"] == "200"


def test_a_request_whose_client_went_away_is_stopped(limited_server, long_row, good_row):
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(limited_server, request_body([long_row], LONG), "abandoned", timeout_s=1)
    stopped = logged(limited_server, "abandoned")
    assert stopped["status"] == "499" and stopped["stopped"] == "'the client went away'"
    assert int(stopped["steps"]) < LONG["num_inference_steps"]

    started = time.monotonic()
    normal = post(limited_server, request_body([good_row], FAST), "after-abandoned")
    assert normal.status_code == 200, normal.text[:300]
    assert time.monotonic() - started < NORMAL_S


def test_a_request_is_stopped_inside_its_step_and_the_next_one_is_served(
    limited_server, scene, good_row
):
    server = limited_server
    long_step = request_body([resized_row(scene, ONE_LONG_STEP_SIDE)], ONE_STEP)
    long = post(server, long_step, "one-long-step")
    assert long.status_code == 504, long.text[:300]
    assert "the request's work is being stopped" in long.json()["message"]

    normal = post(server, request_body([good_row], ONE_STEP), "next")
    assert normal.status_code == 200, normal.text[:300]

    stopped = logged(server, "one-long-step")
    assert stopped["stopped"] == "'timeout'" and stopped["steps"] == "0", stopped["line"]
    overrun = float(stopped["wait_s"]) + float(stopped["run_s"]) - LIMITED_TIMEOUT_S
    assert overrun < STOPPED_WITHIN_S, stopped["line"]
    assert logged(server, "next")["status"] == "200"
