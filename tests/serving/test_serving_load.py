"""8 concurrent clients for 30 s against the tiny model: no 5xx, bounded server memory."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import psutil
import pytest
from conftest import FAST

from serving.client import InpaintClient, make_row, request_body

CLIENTS = 8
DURATION_S = 30.0


def tree_rss(pid: int) -> int:
    """Resident memory of the server: mlflow's CLI, its shell and the uvicorn worker(s)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@pytest.mark.slow
def test_concurrent_clients_get_no_5xx_and_memory_stays_bounded(server, scene, good_row):
    base, _, reference, prompt = scene
    # One request in four is a bad one (an empty mask): errors under load must stay 4xx.
    bad_row = make_row(base, np.zeros((64, 64), np.uint8), reference, prompt)
    bodies = [request_body([good_row], FAST)] * 3 + [request_body([bad_row], FAST)]
    statuses: Counter[tuple[bool, int]] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION_S

    def client(index: int) -> None:
        http = InpaintClient(server.url, timeout_s=120)
        request = index
        while time.monotonic() < deadline:
            body = bodies[request % len(bodies)]
            status = http.invoke(body).status_code
            with lock:
                statuses[(body is bodies[-1], status)] += 1
            request += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    rss = [tree_rss(server.process.pid)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        rss.append(tree_rss(server.process.pid))
        time.sleep(0.5)
    for thread in threads:
        thread.join()

    assert not [s for (_, s) in statuses if s >= 500], statuses
    assert set(statuses) <= {(False, 200), (True, 400)}, statuses
    assert statuses[(False, 200)] >= CLIENTS, statuses  # every client got answers
    # Bounded: the second half of the run holds no more than the first half's peak plus
    # allocator noise, however many requests went through.
    half = len(rss) // 2
    first, second = max(rss[:half]), max(rss[half:])
    assert second <= first + (48 << 20), (first >> 20, second >> 20)
    assert server.process.poll() is None
