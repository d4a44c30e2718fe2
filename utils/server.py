"""The OpenAI-compatible transcription service behind infer_server.py.

Requests flow one way: HTTP upload → ``decode_audio_bytes`` → a ``Job`` on the model's bounded queue → the
model's one worker thread runs ``Transcriber.transcribe_segments`` → the answer in the requested format.
One worker per loaded model means a model is never used by two requests at once (no races); a full queue is
answered 503 at once, a request that is not done within its time limit 504 (a running job stops when its next
batch of segments is decoded), and a job whose client went away is dropped or stopped the same way. Uploads are
decoded in memory (ffmpeg formats through a temporary copy removed at once).

The endpoints follow OpenAI's audio API so its clients work unchanged:
``POST /v1/audio/transcriptions``, ``POST /v1/audio/translations``, ``GET /v1/models[/ID]``, ``GET /health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from utils.audio import SAMPLE_RATE, AudioLoadError, AudioTooLongError, decode_audio_bytes
from utils.languages import decode_language, language_name
from utils.subtitles import CUE_FORMATS, to_srt, to_vtt
from utils.transcribe import DEFAULT_TEMPERATURES, DecodeOptions, Transcriber, Transcript, stats_dict

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
DRAIN_FACTOR = 4  # a too-large upload is read (and dropped) up to this multiple of the limit before the 413
DEFAULT_MODEL_ALIAS = "whisper-1"  # what OpenAI's clients send by default: the first served model


class ApiError(Exception):
    """An error answered as OpenAI does: HTTP ``status`` and ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error", 503: "server_busy", 504: "timeout"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Job:
    """One request's work for a model's worker; ``future`` gets the Transcript or the exception."""

    audio: np.ndarray
    options: DecodeOptions
    deadline: float  # time.monotonic() after which the result is no longer wanted
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stop_error: ApiError | None = None  # what a cancelled running job answers (None: a timeout, 504)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # time.monotonic() when the worker began decoding it

    def timeout_message(self, limit_s: float) -> str:
        """What a 504 says: how long the job waited in the queue and decoded (a request that waited behind others
        was told to send shorter audio)."""
        now, seconds = time.monotonic(), len(self.audio) / SAMPLE_RATE
        if self.started_at is None:
            return (f"the request waited the server's limit of {limit_s:g} s in the queue behind other requests, "
                    f"not decoded ({seconds:.1f} s of audio): retry later, or start the server with a larger "
                    "--request_timeout")
        waited, decoded = self.started_at - self.queued_at, now - self.started_at
        fix = ("send shorter audio or start the server with a larger --request_timeout" if decoded >= waited else
               "retry later, or start the server with a larger --request_timeout")
        return (f"the request took longer than the server's limit of {limit_s:g} s ({waited:.1f} s waiting in the "
                f"queue, {decoded:.1f} s decoding {seconds:.1f} s of audio); {fix}")

    def cancel(self, error: ApiError | None = None) -> None:
        """No longer wanted: skipped if it waits, stopped at the worker's next check if it runs."""
        self.stop_error = self.stop_error or error
        self.cancelled.set()


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give ``future`` its result or exception unless it has one (a shutdown answered the running job already)."""
    with contextlib.suppress(InvalidStateError):
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class ModelWorker:
    """A loaded model, its bounded queue of jobs and the one thread that runs them in order."""

    def __init__(self, name: str, transcriber: Transcriber, *, max_queue: int) -> None:
        self.name = name
        self.transcriber = transcriber
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.running = 0
        self.done = 0
        self._current: Job | None = None
        self._thread = threading.Thread(target=self._run, name=f"model-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queue ``job``; raises ApiError(503) when the queue is full of jobs still wanted (the jobs of requests
        that gave up are dropped first: they held a place until the worker reached them)."""
        try:
            if self.jobs.full():
                self.drop_abandoned()
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(503, f"model {self.name} is busy: {self.jobs.maxsize} requests are already waiting; "
                                "retry later", code="queue_full") from None
        return job.future

    def drop_abandoned(self) -> int:
        """Remove the queued jobs whose request timed out or went away; returns how many."""
        with self.jobs.mutex:
            wanted = [job for job in self.jobs.queue if job is None or not job.cancelled.is_set()]
            dropped = len(self.jobs.queue) - len(wanted)
            if dropped:
                self.jobs.queue.clear()
                self.jobs.queue.extend(wanted)
                self.jobs.unfinished_tasks -= dropped
                self.jobs.not_full.notify(dropped)
        return dropped

    def queued(self) -> int:
        """Jobs waiting whose request still wants them."""
        with self.jobs.mutex:
            return sum(1 for job in self.jobs.queue if job is not None and not job.cancelled.is_set())

    def cancel_all(self) -> None:
        """Answer every queued job and the running one 503 (the server is shutting down) at once; the running one
        stops at its next check (:meth:`_transcribe`: a batch of chunks can take a minute), its result unwanted."""
        shutting_down = ApiError(503, "the server is shutting down", code="shutting_down")
        with contextlib.suppress(queue.Empty):
            while True:
                job = self.jobs.get_nowait()
                if job is not None and job.future.set_running_or_notify_cancel():
                    job.cancel(shutting_down)
                    job.future.set_exception(shutting_down)
        running = self._current
        if running is not None:
            running.cancel(shutting_down)
            _settle(running.future, error=shutting_down)  # the request answers now, not after the batch

    def stop(self, grace_s: float = 2.0) -> None:
        """End the worker. The HTTP server has answered every open request by now, so no job's result is wanted:
        queued jobs fail at once, the running one is told to stop at its next check and given ``grace_s``
        seconds; a decode still running after that ends with the process (the thread is a daemon)."""
        self.cancel_all()
        with contextlib.suppress(queue.Full):
            self.jobs.put(None, timeout=grace_s)
        self._thread.join(timeout=grace_s)
        if self._thread.is_alive():
            logger.warning("model %s: a cancelled request is still decoding; not waiting for it", self.name)

    @property
    def decoding(self) -> bool:
        """Whether the worker thread still runs after :meth:`stop` (a decode it was not waited for)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            # a request that timed out while its job waited has cancelled the future: skip the job. From here on the
            # future is running, so a timeout no longer cancels it (setting a cancelled future's result raises,
            # which would end this thread and the model with it): _transcribe checks job.cancelled instead.
            if not job.future.set_running_or_notify_cancel():
                continue
            if job.cancelled.is_set() or time.monotonic() > job.deadline:
                job.future.set_exception(TimeoutError("timed out while waiting in the queue"))
                continue
            self.running, self._current = 1, job
            job.started_at = time.monotonic()
            result, error = None, None
            try:
                result = self._transcribe(job)
            except BaseException as e:  # noqa: BLE001 - handed to the request, which answers it
                error = e
            # counted before the request is answered: a client that asks /health right after its answer sees it done
            self.running, self._current = 0, None
            self.done += 1
            _settle(job.future, result, error)

    def _transcribe(self, job: Job) -> Transcript:
        segments, info = self.transcriber.transcribe_segments(job.audio, job.options)
        kept = []
        # checked between segments, which come a batch of chunks at a time (--batch_size × up to 30 s of audio): a
        # job that timed out, whose client went away or that the shutdown stopped ends there
        for segment in segments:
            if job.cancelled.is_set() or time.monotonic() > job.deadline:
                raise job.stop_error or TimeoutError("timed out while decoding")
            kept.append(segment)
        return Transcript.collect(kept, info)


@dataclass(frozen=True)
class ServerOptions:
    """Limits and defaults of the service.

    Attributes:
        api_key: required as ``Authorization: Bearer <key>`` on /v1/* (None = no authentication).
        max_upload_bytes: larger uploads are refused with 413.
        max_audio_seconds: longer audio is refused with 413, found while decoding (a small compressed file can hold
            hours: their samples take the server's memory); None = no limit.
        request_timeout: seconds a request may wait and run; then 504.
        decode: decoding defaults (batch size, thresholds, language...); a request's fields override them.
    """

    api_key: str | None = None
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float | None = 120 * 60.0
    request_timeout: float = 300.0
    decode: DecodeOptions = DecodeOptions()


class TranscriptionService:
    """The served models and the request logic, independent of the HTTP framework."""

    def __init__(self, models: dict[str, Transcriber], options: ServerOptions, *, max_queue: int = 16) -> None:
        if not models:
            raise ValueError("no model to serve")
        self.options = options
        self.workers = {name: ModelWorker(name, t, max_queue=max_queue) for name, t in models.items()}
        self.default = next(iter(self.workers))

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()

    def still_decoding(self) -> bool:
        """Whether a worker still decodes after :meth:`close` (a shutdown did not wait for its batch)."""
        return any(worker.decoding for worker in self.workers.values())

    def check_key(self, authorization: str | None) -> None:
        key = self.options.api_key
        if key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                "server was started with (--api_key)", code="invalid_api_key")

    def worker(self, model: str | None) -> ModelWorker:
        if not model or model == DEFAULT_MODEL_ALIAS:
            return self.workers[self.default]
        if model not in self.workers:
            raise ApiError(404, f"model {model!r} is not served here; available: "
                                f"{', '.join(self.workers)} (or {DEFAULT_MODEL_ALIAS} for {self.default})",
                           param="model", code="model_not_found")
        return self.workers[model]

    def decode_options(self, form: dict[str, str], *, translate: bool) -> tuple[DecodeOptions, str]:
        """A request's form fields → (decoding options, response format); ApiError(400) on a bad field."""
        fmt = form.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {fmt!r} is not one of {', '.join(RESPONSE_FORMATS)}",
                           param="response_format")
        granularities = form.get("timestamp_granularities[]", [])
        unknown = [g for g in granularities if g not in ("word", "segment")]
        if unknown:
            raise ApiError(400, f"timestamp_granularities[] takes word and/or segment, got {unknown[0]!r}",
                           param="timestamp_granularities[]")
        if granularities and fmt != "verbose_json":
            raise ApiError(400, "timestamp_granularities[] needs response_format=verbose_json",
                           param="timestamp_granularities[]")
        changes: dict[str, Any] = {"task": "translate" if translate else "transcribe",
                                   "timestamps": fmt in (*CUE_FORMATS, "verbose_json"),
                                   "word_timestamps": "word" in granularities, "decode_stats": fmt == "verbose_json"}
        if _bool_field(form, "stream"):
            raise ApiError(400, "stream=true is not supported: this server answers with the whole transcript (as "
                                "OpenAI's whisper-1 does); send stream=false or leave it out (live transcription: "
                                "realtime_transcribe.py)", param="stream")
        language = form.get("language")  # translations: the spoken language (OpenAI's takes none: detected)
        if language:
            try:
                changes["language"] = decode_language(language)  # "auto": detected, whatever the model's
            except ValueError as e:
                raise ApiError(400, str(e), param="language") from None
        if form.get("prompt"):
            changes["initial_prompt"] = form["prompt"]
        if form.get("temperature") not in (None, ""):
            try:
                t = float(form["temperature"])
            except ValueError:
                raise ApiError(400, f"temperature must be a number, got {form['temperature']!r}",
                               param="temperature") from None
            if not 0 <= t <= 1:
                raise ApiError(400, f"temperature must be between 0 and 1, got {t}", param="temperature")
            # 0: greedy with the usual fallback to higher temperatures (OpenAI's meaning); else sample at t
            changes["temperatures"] = DEFAULT_TEMPERATURES if t == 0 else (t,)
        return replace(self.options.decode, **changes), fmt

    async def transcribe(self, data: bytes, filename: str, form: dict[str, Any], *, translate: bool,
                         gone: Callable[[], Awaitable[bool]] | None = None) -> tuple[Transcript, str]:
        """Decode the upload, queue it on the requested model and wait for the transcript (or ApiError).

        ``gone``: whether the client has disconnected, asked every ``DISCONNECT_POLL_S`` while the job waits or runs;
        a job whose client went away is skipped or stopped (before, it was decoded in full for nobody, holding the
        model and a place in the queue: 52.7 s for a 3.7 s request behind one abandoned 4-minute upload)."""
        worker = self.worker(form.get("model"))
        options, fmt = self.decode_options(form, translate=translate)
        try:  # translations to an English-only model: it read the speech as English sounds
            worker.transcriber.check_task(options.task, options.language, flag="translations: task ")
        except ValueError as e:
            raise ApiError(400, f"model {worker.name}: {e}", param="model") from None
        try:  # a language the model has no token for: transformers raised in generate(), CTranslate2 read garbage
            worker.transcriber.check_language(options.language, flag="language ")
        except ValueError as e:
            raise ApiError(400, f"model {worker.name}: {e}", param="language") from None
        loop = asyncio.get_running_loop()
        try:
            audio = await loop.run_in_executor(None, functools.partial(
                decode_audio_bytes, data, filename, max_seconds=self.options.max_audio_seconds))
        except AudioTooLongError as e:
            raise ApiError(413, f"{e}: send shorter audio, or start the server with a larger --max_audio_minutes",
                           param="file", code="audio_too_long") from None
        except AudioLoadError as e:
            raise ApiError(400, f"could not decode the audio file: {e}", param="file",
                           code="invalid_audio") from None
        timeout = self.options.request_timeout
        job = Job(audio=audio, options=options, deadline=time.monotonic() + timeout)
        future = worker.submit(job)
        try:
            transcript = await _wait(asyncio.wrap_future(future), timeout, gone)
        except _ClientGone:
            job.cancel(ApiError(499, "the client closed the request", code="client_closed"))
            future.cancel()
            logger.info("model %s: the client of a %.1f s request went away: its job %s", worker.name,
                        len(audio) / SAMPLE_RATE, "is stopped" if future.running() else "is dropped")
            raise job.stop_error from None
        except asyncio.CancelledError:  # the server's task ended (a forced shutdown): nobody waits for the job
            job.cancel()
            raise
        except (asyncio.TimeoutError, TimeoutError):
            job.cancel()
            raise ApiError(504, job.timeout_message(timeout), code="timeout") from None
        except ValueError as e:  # e.g. a prompt or option the model cannot take
            raise ApiError(400, str(e)) from None
        return transcript, fmt

    def cancel_all(self) -> None:
        """Answer every queued and running job 503 now (a second Ctrl-C while the server stops)."""
        for worker in self.workers.values():
            worker.cancel_all()

    def open_jobs(self) -> int:
        """Jobs queued or running on all models, read without the queues' locks (a signal handler asks)."""
        return sum(len(w.jobs.queue) + w.running for w in self.workers.values())

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": {name: {"queued": w.queued(), "running": w.running,
                                                  "done": w.done} for name, w in self.workers.items()}}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model(name) for name in self.workers]}

    def model(self, name: str) -> dict[str, Any]:
        """One served model (or the alias) as OpenAI's model object; ApiError(404) for another name."""
        self.worker(name)
        return {"id": name, "object": "model", "created": 0, "owned_by": "whisper-finetune"}


class _ClientGone(Exception):
    """The client of a request disconnected while its job waited or ran."""


DISCONNECT_POLL_S = 0.5  # how often a waiting request checks that its client is still there


async def _wait(awaitable: Awaitable[Any], timeout: float, gone: Callable[[], Awaitable[bool]] | None) -> Any:
    """``awaitable``'s result; TimeoutError after ``timeout`` seconds, _ClientGone once ``gone()`` says so."""
    task = asyncio.ensure_future(awaitable)
    end = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({task}, timeout=left if gone is None else min(left, DISCONNECT_POLL_S))
            if done:
                return task.result()
            if gone is not None and await gone():
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()


def _bool_field(form: dict[str, Any], name: str) -> bool:
    """A true/false form field (absent or empty: false); ApiError(400) for another value."""
    value = str(form.get(name) or "").strip().lower()
    if value in ("", "false", "0", "no", "off"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise ApiError(400, f"{name} must be true or false, got {form[name]!r}", param=name)


def render(transcript: Transcript, fmt: str, *, task: str) -> tuple[str | dict[str, Any], str]:
    """(body, media type) of a transcript in an OpenAI ``response_format``."""
    if fmt == "text":
        return transcript.text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(transcript), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(transcript), "text/vtt; charset=utf-8"
    if fmt == "verbose_json":  # a translation's language is the text's, English (OpenAI's TranslationVerbose)
        language = "english" if task == "translate" else (
            language_name(transcript.language) if transcript.language else None)
        return {"task": task, "language": language,
                "duration": round(transcript.duration, 3), "text": transcript.text,
                "segments": [{"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                              **stats_dict(s)} for i, s in enumerate(transcript.segments)],
                **({"words": [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                              for s in transcript.segments for w in s.words]}
                   if any(s.words for s in transcript.segments) else {})}, "application/json"
    return {"text": transcript.text}, "application/json"


def multipart_body(fields: dict[str, Any], file: tuple[str, bytes] | None) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data request like ``curl -F file=@x.wav -F model=...``, for
    clients without the openai package (tests, tools/bench_server.py); a list value repeats its field."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n'.encode())
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + file[1] + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def build_app(service: TranscriptionService):
    """The Starlette application serving ``service``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(e: ApiError) -> JSONResponse:
        if e.status >= 500:
            logger.warning("%d: %s", e.status, e.message)
        return JSONResponse(e.body(), status_code=e.status)

    def too_large(size: int, at_least: bool = False) -> ApiError:
        mb = 1024 ** 2
        return ApiError(413, f"the upload ({'at least ' if at_least else ''}{size / mb:.1f} MB) is larger than the "
                             f"server's limit of {service.options.max_upload_bytes / mb:g} MB (--max_upload_mb): send "
                             "a smaller or compressed file (e.g. mp3, opus), or start the server with a larger "
                             "--max_upload_mb", param="file", code="file_too_large")

    async def read_body(request: Request) -> bytes:
        """The request body, refused with 413 when it passes the upload limit. The rest of a refused body is read
        and dropped (up to DRAIN_FACTOR times the limit) before answering: a client that sends the whole body
        before reading the answer would otherwise see a broken pipe instead of the 413."""
        limit = service.options.max_upload_bytes + 64 * 1024  # room for the multipart fields
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                if size > DRAIN_FACTOR * limit:
                    break
                chunks = []
                continue
            chunks.append(chunk)
        if size > limit:
            said = request.headers.get("content-length", "")  # the whole size, where the client gave it
            whole = int(said) if said.isdigit() and int(said) >= size else None
            raise too_large(whole or size, at_least=whole is None and size > DRAIN_FACTOR * limit)
        return b"".join(chunks)

    async def audio_endpoint(request: Request, translate: bool) -> Response:
        try:
            service.check_key(request.headers.get("authorization"))
            body = await read_body(request)
            request._body = body  # starlette parses the form from the body read (and capped) above
            async with request.form(max_part_size=1024 * 1024) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "no audio: send the file as the field 'file' of a multipart/form-data request "
                                        f"(this one: {request.headers.get('content-type') or 'no Content-Type'})",
                                   param="file")
                data = await upload.read()
                if len(data) > service.options.max_upload_bytes:
                    raise too_large(len(data))
                fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
                fields["timestamp_granularities[]"] = [v for v in form.getlist("timestamp_granularities[]")
                                                       if isinstance(v, str)]
                filename = upload.filename or "upload"
            transcript, fmt = await service.transcribe(data, filename, fields, translate=translate,
                                                       gone=request.is_disconnected)
        except ApiError as e:
            return error(e)
        except ClientDisconnect:  # gone while uploading (a traceback in the log, as if the server had failed)
            logger.info("a client went away while uploading (%s): nothing decoded", request.url.path)
            return Response(status_code=499)
        except ValueError as e:  # a malformed multipart body
            return error(ApiError(400, f"malformed request: {e}"))
        except HTTPException as e:  # starlette's multipart parser: a field over max_part_size, too many fields…
            return error(ApiError(e.status_code, f"malformed request: {e.detail}"))
        body, media = render(transcript, fmt, task="translate" if translate else "transcribe")
        if isinstance(body, dict):
            return JSONResponse(body)
        return Response(body, media_type=media)

    async def transcriptions(request: Request) -> Response:
        return await audio_endpoint(request, translate=False)

    async def translations(request: Request) -> Response:
        return await audio_endpoint(request, translate=True)

    async def models(request: Request) -> Response:
        try:
            service.check_key(request.headers.get("authorization"))
            if request.path_params.get("model"):  # (/v1/models/ is the list)
                return JSONResponse(service.model(request.path_params["model"]))
        except ApiError as e:
            return error(e)
        return JSONResponse(service.models())

    async def health(request: Request) -> Response:
        return JSONResponse(service.health())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown paths (404) and methods (405) answered in OpenAI's error shape, as every other error is."""
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", None) or "error"
        if status == 404:
            detail = f"no such endpoint: {request.method} {request.url.path} (this server has " \
                     "POST /v1/audio/transcriptions, POST /v1/audio/translations, GET /v1/models[/ID], GET /health)"
        elif status == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        return error(ApiError(status, detail))

    return Starlette(routes=[
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", translations, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: http_error})
