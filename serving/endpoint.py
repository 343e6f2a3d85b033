"""The scoring server's `/invocations`: admission, request checks, one model thread per worker,
deadlines that stop the work, and one log line per request.

It replaces MLflow's own route (`mlflow.pyfunc.scoring_server`), which runs each request in a
new thread, lets a request that timed out compute to its end while later ones queue behind it
unbounded, drops unknown columns and params with a warning, and answers errors with a dump of
the request. Here, in each uvicorn worker:

- with a token set ($CAMEO_SERVING_TOKEN), a request without `Authorization: Bearer <token>`
  is answered 401 before anything else; a body larger than `serving.max_request_mb` is
  answered 413 before it is read (its declared length, else as it streams in);
- one request computes and up to `serving.max_waiting` wait; more are answered 503 at once,
  with `Retry-After` (about one request's run time);
- unknown keys, params and columns are refused with 400 naming the closest valid one, before any
  work (`serving.schema.RequestSchema`); every error's `message` is one line that starts with
  the field at fault;
- requests are parsed by MLflow's own parsers and computed one at a time, first come first
  served, in the worker's model thread;
- a request whose timeout (`serving.timeout_s`) passes is answered 504 at once, and one whose
  client goes away is dropped; either way its work stops: a waiting request leaves the queue,
  a running one stops at the model's next check, between two operations of its networks if
  need be (`serving.model.RequestStop`), and its place is free again when its work has stopped;
- every request is logged: id (the client's `X-Request-Id`, else a new one, echoed in the
  response), status, rows, bytes, time waited, time computed, denoising steps, and the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from serving.schema import RequestError, RequestSchema
from serving.served import CURRENT_REQUEST, RequestCancelled, ServedRequest, ServerLimits

log = logging.getLogger("serving")

CLIENT_GONE = 499  # logged only (nginx's "client closed request"): nobody reads the answer
# MLflow's schema enforcement prefixes its reason with the whole request and the schema.
_MLFLOW_ECHO = re.compile(
    r"^Failed to enforce schema of data '.*' with schema '.*'\. Error: ", re.DOTALL
)


class BodyTooLarge(Exception):
    """A request body over the server's limit, found before or while reading it."""


def authorized(request: Request, token: str | None) -> bool:
    """Whether the request sends the server's bearer token (always, where none is set)."""
    if token is None:
        return True
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    # In constant time: how much of a guess matched must not show in the answer's timing.
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cameo"'}
UNAUTHORIZED = (
    "authorization: this server requires `Authorization: Bearer <token>` with its token "
    "(CAMEO_SERVING_TOKEN); none was sent, or another"
)


def declared_length(request: Request) -> int:
    """The body's Content-Length (0 where it declares none, or no number)."""
    declared = request.headers.get("content-length", "").strip()
    return int(declared) if declared.isdigit() else 0


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused (BodyTooLarge) as soon as it is known to exceed
    `max_bytes`: by its Content-Length before a byte is read, else as it streams in."""
    if declared_length(request) > max_bytes:
        raise BodyTooLarge(declared_length(request))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def one_line(message: str) -> str:
    """An error message as the client gets it: MLflow's request echo dropped, one line."""
    return " ".join(_MLFLOW_ECHO.sub("", message, count=1).split())


class Admission:
    """The requests one worker holds (computing, waiting, or being parsed): at most one
    computing plus `max_waiting`. Used from the event loop only."""

    def __init__(self, max_waiting: int) -> None:
        self.capacity = 1 + max_waiting
        self.held = 0
        self._run_s: float | None = None  # moving average of recent run times

    def enter(self) -> bool:
        if self.held >= self.capacity:
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1

    def ran(self, seconds: float) -> None:
        self._run_s = seconds if self._run_s is None else 0.7 * self._run_s + 0.3 * seconds

    def retry_after(self) -> int:
        """Seconds until a place is likely free: about one request's run time."""
        return max(1, math.ceil(self._run_s or 0))


@dataclass
class Call:
    """One request's record, for its answer and its log line."""

    request: ServedRequest
    arrived: float
    size: int
    rows: int | None = None
    started: float | None = None  # when the model thread took it
    finished: float | None = None  # when its work ended
    status: int | None = None
    message: str = ""
    future: Future | None = None
    work_done: asyncio.Event = field(default_factory=asyncio.Event)

    def log_line(self) -> str:
        end = self.finished or time.monotonic()
        waited = (self.started or end) - self.arrived
        ran = end - self.started if self.started is not None else 0.0
        rows = "-" if self.rows is None else self.rows  # "-": refused before it was parsed
        line = (
            f"request id={self.request.id} status={self.status} rows={rows} "
            f"bytes={self.size} wait_s={waited:.2f} run_s={ran:.2f} steps={self.request.steps}"
        )
        if self.request.cancelled:
            line += f" stopped={self.request.reason!r}"
        return line + (f" message={self.message!r}" if self.message else "")


async def _client_gone(request: Request) -> None:
    """Return when the client closes the connection: once the body is read, the only message
    left to receive is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Invocations:
    """The `/invocations` route of one worker, around a loaded pyfunc model."""

    def __init__(self, model: Any, limits: ServerLimits, token: str | None = None) -> None:
        """`token`: the bearer token requests must send (None: no token is asked for)."""
        from mlflow.pyfunc import scoring_server

        self._parse_data = scoring_server.infer_and_parse_data
        self._to_json = scoring_server.predictions_to_json
        self.model = model
        self.limits = limits
        self.token = token
        self.schema = RequestSchema.from_signature(model.metadata.signature)
        self.input_schema = model.metadata.get_input_schema()
        self.admission = Admission(limits.max_waiting)
        # One thread computes: requests queue in its FIFO, and one that has not started yet can
        # be taken out of it (Future.cancel).
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cameo-model")

    def add_to(self, app: FastAPI) -> None:
        """Replace MLflow's /invocations of `app` with this route."""
        routes = app.router.routes
        app.router.routes = [r for r in routes if getattr(r, "path", "") != "/invocations"]
        app.add_api_route("/invocations", self.handle, methods=["POST"])

    async def handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        call = Call(
            request=ServedRequest(request_id, deadline=arrived + self.limits.timeout_s),
            arrived=arrived,
            size=declared_length(request),
        )
        if not authorized(request, self.token):
            return self._answer(
                call, 401, "UNAUTHENTICATED", UNAUTHORIZED, headers=BEARER_CHALLENGE
            )
        if call.size > self.limits.max_request_bytes:
            return self._answer(call, 413, "RESOURCE_EXHAUSTED", self._too_large(call.size))
        if not self.admission.enter():
            retry = self.admission.retry_after()
            message = (
                f"busy: this worker holds {self.admission.held} requests, 1 computing and "
                f"{self.limits.max_waiting} waiting (serving.max_waiting); retry after {retry} s"
            )
            return self._answer(call, 503, "TEMPORARILY_UNAVAILABLE", message, retry_after=retry)
        try:
            return await self._admitted(call, request)
        finally:
            if call.future is None:  # never handed to the model thread: its place is free now
                self.admission.leave()

    async def _admitted(self, call: Call, request: Request) -> Response:
        from mlflow.exceptions import MlflowException

        try:
            body = await read_body(request, self.limits.max_request_bytes)
        except BodyTooLarge as e:
            (call.size,) = e.args
            return self._answer(call, 413, "RESOURCE_EXHAUSTED", self._too_large(call.size))
        call.size = len(body)
        mime = request.headers.get("content-type", "").partition(";")[0].strip()
        if mime != "application/json":
            message = f"content-type: send application/json, not {mime or 'none'}"
            return self._answer(call, 415, "BAD_REQUEST", message)
        try:
            data, params = await asyncio.to_thread(self._parse, body)
        except RequestError as e:
            return self._answer(call, 400, "INVALID_PARAMETER_VALUE", str(e))
        except MlflowException as e:
            return self._answer(call, e.get_http_status_code(), e.error_code, one_line(e.message))
        except Exception as e:  # the data does not make a table (pandas' own errors)
            message = one_line(f"body: cannot be read as rows: {type(e).__name__}: {e}")
            return self._answer(call, 400, "BAD_REQUEST", message)
        call.rows = len(data)

        loop = asyncio.get_running_loop()
        call.future = self._model_thread.submit(self._compute, call, data, params)
        call.future.add_done_callback(lambda _: _call_soon(loop, self._work_ended, call))
        gone = asyncio.ensure_future(_client_gone(request))
        ended = asyncio.ensure_future(call.work_done.wait())
        try:
            remaining = max(0.0, call.request.deadline - time.monotonic())
            await asyncio.wait(
                {gone, ended}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # MLflow's backstop timeout, or the server stopping
            call.status, call.message = 504, "the server stopped waiting"
            self._stop(call, "the server stopped waiting")
            raise
        finally:
            gone.cancel()
            ended.cancel()
        if not call.future.done():  # a result that came with the deadline is still sent
            if gone.done():
                self._stop(call, "the client went away")
                return self._answer(call, CLIENT_GONE, "CANCELLED", "the client went away")
            self._stop(call, "timeout")
            return self._answer(call, 504, "DEADLINE_EXCEEDED", self._timeout_message())
        return self._result(call)

    def _parse(self, body: bytes) -> tuple[Any, dict[str, Any] | None]:
        """The request's rows (MLflow's parsing, as its own route does) and params; runs in a
        worker thread: large bodies take a while to decode."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError("body", f"not valid JSON ({e})") from None
        data_key = self.schema.check(payload)
        data = self._parse_data({data_key: payload[data_key]}, self.input_schema)
        return data, payload.get("params")

    def _compute(self, call: Call, data: Any, params: dict[str, Any] | None) -> str:
        """In the model thread: predict and serialise, with the request visible to the model."""
        call.started = time.monotonic()
        token = CURRENT_REQUEST.set(call.request)
        try:
            call.request.check()  # it may have waited past its deadline
            output = StringIO()
            self._to_json(self.model.predict(data, params=params), output)
            return output.getvalue()
        finally:
            CURRENT_REQUEST.reset(token)
            call.finished = time.monotonic()

    def _stop(self, call: Call, reason: str) -> None:
        """Stop the request's work: out of the queue if it has not started, else at the
        model's next check of `call.request` (`serving.model.RequestStop`)."""
        call.request.cancel(reason)
        assert call.future is not None
        call.future.cancel()

    def _work_ended(self, call: Call) -> None:
        """On the event loop, once the model thread is done with the request (or it left the
        queue): its place is free; log it if it has been answered."""
        self.admission.leave()
        if call.started is not None and call.finished is not None and not call.request.cancelled:
            self.admission.ran(call.finished - call.started)
        call.work_done.set()
        if call.status is not None:
            log.info(call.log_line())

    def _result(self, call: Call) -> Response:
        from mlflow.exceptions import MlflowException

        assert call.future is not None
        try:
            return self._answer(call, 200, None, "", content=call.future.result())
        except RequestCancelled:  # the model found the deadline passed just before we did
            return self._answer(call, 504, "DEADLINE_EXCEEDED", self._timeout_message())
        except MlflowException as e:
            return self._answer(call, e.get_http_status_code(), e.error_code, one_line(e.message))
        except Exception as e:
            log.exception("request id=%s failed", call.request.id)
            message = one_line(f"internal error: {type(e).__name__}: {e}")
            return self._answer(call, 500, "INTERNAL_ERROR", message)

    def _too_large(self, size: int) -> str:
        return (
            f"body: at least {size / 1e6:.1f} MB, over this server's limit of "
            f"{self.limits.max_request_mb} MB (serving.max_request_mb): send fewer rows or "
            "smaller images (JPEG for photographs)"
        )

    def _timeout_message(self) -> str:
        return (
            f"timeout: no answer within {self.limits.timeout_s:g} s (serving.timeout_s); the "
            "request's work is being stopped: send fewer steps, rows or pixels, or retry later"
        )

    def _answer(
        self,
        call: Call,
        status: int,
        error_code: str | None,
        message: str,
        content: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """The response, logged now unless the model thread still has the request (then when
        its work ends)."""
        call.status, call.message = status, message
        if call.future is None or call.work_done.is_set():
            log.info(call.log_line())
        if content is None:
            content = json.dumps(
                {"error_code": error_code, "message": message, "request_id": call.request.id}
            )
        headers = {**(headers or {}), "X-Request-Id": call.request.id}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return Response(content, status, headers, media_type="application/json")


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Run `callback` on the event loop from the model thread; a loop already closed (the
    worker stopping) has nobody left to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
