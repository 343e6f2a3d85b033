"""A request past its timeout, or abandoned by its client, stops its work within a step (its
log line comes when its work has ended), and the next request is answered as usual (the server
with a 5 s timeout, `limited_server`)."""

from __future__ import annotations

import time

import pytest
import requests
from conftest import FAST, request_log

from serving.client import make_row, request_body

# 100 steps at 512x512 take minutes on the tiny model (about a second a step): far past the
# 5 s timeout, so only a stopped computation ends within STOP_S.
LONG = {"num_inference_steps": 100}
STOP_S = 60  # generous for a loaded machine: one step and the answer
NORMAL_S = 60  # the same for a normal request, which takes about a second


@pytest.fixture(scope="module")
def long_row(scene):
    base, mask, reference, prompt = scene
    return make_row(base.resize((512, 512)), mask.resize((512, 512)), reference, prompt)


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
    assert message.startswith("timeout: no answer within 5 s (serving.timeout_s)")
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
