"""8 clients for 20 s against a worker that holds 2 requests (one computing, one waiting), with a
2 s timeout: the queue stays full, and every request gets an answer (200, 400, 503 with
Retry-After, or 504) and a log line; none is lost, the server's memory stays bounded."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import psutil
import pytest
import requests
from conftest import FAST, request_log

from serving.client import make_row, request_body

CLIENTS = 8
DURATION_S = 20.0


def tree_rss(pid: int) -> int:
    """Resident memory of the server: the serving.app process and any uvicorn workers."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@pytest.mark.slow
def test_a_full_queue_answers_every_request(limited_server, scene, good_row):
    base, mask, reference, prompt = scene
    # Good requests; bad ones (an empty mask), which must stay 400s; slow ones (512x512 at 100
    # steps: minutes here, many times the timeout), which must be answered 504 and stopped.
    bad_row = make_row(base, np.zeros((64, 64), np.uint8), reference, prompt)
    slow_row = make_row(base.resize((512, 512)), mask.resize((512, 512)), reference, prompt)
    bodies = {
        "good": request_body([good_row], FAST),
        "bad": request_body([bad_row], FAST),
        "slow": request_body([slow_row], {"num_inference_steps": 100}),
    }
    plan = ["good", "good", "bad", "good", "slow", "good"]
    answers: dict[str, tuple[str, int, str | None]] = {}  # id -> (kind, status, Retry-After)
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION_S

    def client(index: int) -> None:
        session = requests.Session()
        sent = index
        while time.monotonic() < deadline:
            kind = plan[sent % len(plan)]
            request_id = f"load-{index}-{sent}-{uuid.uuid4().hex[:6]}"
            headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
            try:
                response = session.post(
                    f"{limited_server.url}/invocations",
                    json=bodies[kind],
                    headers=headers,
                    timeout=120,
                )
            except requests.RequestException as e:  # a lost request
                with lock:
                    failures.append(f"{request_id}: {e}")
            else:
                with lock:
                    answers[request_id] = (
                        kind,
                        response.status_code,
                        response.headers.get("Retry-After"),
                    )
                if response.status_code == 503:
                    time.sleep(0.25)  # retry soon (not after Retry-After): keep the queue full
            sent += 1

    # A slow request first: its VAE over 512x512 pixels is the largest allocation any request
    # here makes, so both halves of the run below start from that peak.
    first_slow = requests.post(
        f"{limited_server.url}/invocations",
        json=bodies["slow"],
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert first_slow.status_code == 504
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    rss = [tree_rss(limited_server.process.pid)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        rss.append(tree_rss(limited_server.process.pid))
        time.sleep(0.5)
    for thread in threads:
        thread.join()

    assert not failures, failures[:5]
    statuses = {(kind, status) for kind, status, _ in answers.values()}
    allowed = {("good", 200), ("bad", 400)} | {
        (kind, status) for kind in bodies for status in (503, 504)
    }
    assert statuses <= allowed, statuses - allowed
    assert {("good", 200), ("bad", 400), ("slow", 504)} <= statuses, statuses
    busy = [retry for _, status, retry in answers.values() if status == 503]
    assert busy and all(retry is not None and int(retry) >= 1 for retry in busy)

    # Every request has its log line, with the status its client got: none was lost. Lines
    # of stopped requests come when their work ends, soon after their answer.
    wait_until = time.monotonic() + 60
    while not set(answers) <= set(lines := request_log(limited_server)):
        assert time.monotonic() < wait_until, sorted(set(answers) - set(lines))[:5]
        time.sleep(0.5)
    assert {i: str(answers[i][1]) for i in answers} == {i: lines[i]["status"] for i in answers}

    # Bounded: the second half of the run holds no more than the first half's peak plus
    # allocator noise, however many requests went through.
    half = len(rss) // 2
    first, second = max(rss[:half]), max(rss[half:])
    assert second <= first + (48 << 20), (first >> 20, second >> 20)
    response = requests.post(
        f"{limited_server.url}/invocations",
        json=bodies["good"],
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200  # free again once the clients stopped
