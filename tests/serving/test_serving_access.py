"""Who may call the real scoring server, and with how much: a server started with
$CAMEO_SERVING_TOKEN answers /invocations and /version only to requests that send the token,
before any other work; a body over `serving.max_request_mb` is refused 413 before it is read,
whether its length is declared or it streams in chunks; the server goes on serving."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from conftest import FAST, ONE_THREAD, request_log

from serving.client import InpaintClient, ServingError, request_body
from serving.params import ServingParams
from serving.served import SERVING_TOKEN_ENV
from serving.server import ModelServer

TOKEN = "test-token-0f9e"
MAX_REQUEST_MB = 1


@pytest.fixture(scope="module")
def guarded_server(logged) -> Iterator[ModelServer]:
    settings = ServingParams(timeout_s=120, max_waiting=4, max_request_mb=MAX_REQUEST_MB)
    env = {**ONE_THREAD, SERVING_TOKEN_ENV: TOKEN}
    with ModelServer(logged.model_uri, settings=settings, env=env) as server:
        yield server
    assert not server.log_path.exists()  # a temporary log goes with a server that answered


def post(server: ModelServer, body: bytes | Iterator[bytes], headers: dict[str, str]):
    headers = {"Content-Type": "application/json", **headers}
    return requests.post(f"{server.url}/invocations", data=body, headers=headers, timeout=60)


def test_the_server_says_it_asks_for_a_token(guarded_server):
    first = guarded_server.log_path.read_text().splitlines()[0]
    assert first.endswith(f"bodies up to {MAX_REQUEST_MB} MB; bearer token required"), first


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"],
    ids=["none", "wrong", "other scheme", "empty", "longer"],
)
def test_requests_without_the_token_get_401_before_any_work(
    guarded_server, good_row, authorization, request
):
    headers = {"X-Request-Id": "auth-" + request.node.callspec.id.replace(" ", "-")}
    if authorization:
        headers["Authorization"] = authorization
    body = request_body([good_row], FAST)
    answer = requests.post(f"{guarded_server.url}/invocations", json=body, headers=headers)
    assert answer.status_code == 401, answer.text[:300]
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.json()["message"].startswith("authorization: this server requires")
    logged = request_log(guarded_server)[headers["X-Request-Id"]]
    assert logged["status"] == "401" and logged["rows"] == "-"  # never parsed
    assert requests.get(f"{guarded_server.url}/version", headers=headers).status_code == 401


def test_probes_stay_open_and_the_token_opens_the_rest(guarded_server, good_row, monkeypatch):
    for path in ("/ping", "/health"):
        assert requests.get(guarded_server.url + path, timeout=5).status_code == 200
    with pytest.raises(ServingError, match="HTTP 401: authorization"):
        InpaintClient(guarded_server.url).predict([good_row], FAST)
    [result] = InpaintClient(guarded_server.url, token=TOKEN).predict([good_row], FAST)
    assert result.image.size == (64, 64)
    # `cameo inpaint` and `serve-check` send the token of their environment.
    monkeypatch.setenv(SERVING_TOKEN_ENV, TOKEN)
    assert InpaintClient(guarded_server.url).predict([good_row], FAST)
    version = requests.get(
        f"{guarded_server.url}/version", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert version.status_code == 200 and version.json()["model_uri"] == guarded_server.model_uri


def read_response(connection: socket.socket) -> str:
    """One HTTP response, read to its announced length: headers and body may come apart."""
    received = b""
    while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length and (chunk := connection.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(guarded_server):
    """Headers announcing 10 GB and no body: the answer comes at once, so nothing was read."""
    address = urlsplit(guarded_server.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: cameo\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nX-Request-Id: huge\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        started = time.monotonic()
        answer = read_response(connection)
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert time.monotonic() - started < 10
    assert "body: at least 10000.0 MB, over this server's limit of 1 MB" in answer
    assert request_log(guarded_server)["huge"]["status"] == "413"


def test_a_streamed_body_over_the_limit_is_refused_and_the_server_goes_on(guarded_server, good_row):
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(3 * MAX_REQUEST_MB):
            yield b" " * 1_000_000

    headers = {"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "streamed"}
    answer = post(guarded_server, chunks(), headers)
    assert answer.status_code == 413, answer.text[:300]
    assert "serving.max_request_mb" in answer.json()["message"]
    assert request_log(guarded_server)["streamed"]["status"] == "413"
    assert InpaintClient(guarded_server.url, token=TOKEN).predict([good_row], FAST)
