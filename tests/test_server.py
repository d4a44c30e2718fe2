"""infer_server.py: the real server on 127.0.0.1 with real whisper-base, called with the official ``openai``
client and with raw HTTP requests (as curl sends them)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import infer
import infer_server
from conftest import EN_SENTENCE, REPO_ROOT, make_speech
from utils.audio import load_audio
from utils.server import Job, ModelWorker, multipart_body
from utils.text import error_rate
from utils.transcribe import DecodeOptions, load_transcriber

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python infer_server.py ...`` on a free port, with its own empty TMPDIR; stopped on exit."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = tmp / "server-tmp"
        self.tmpdir.mkdir()
        self.log = tmp / "server.log"
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "infer_server.py", f"--port={self.port}", *args],
                                         cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not answer /health:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        return _request(urllib.request.Request(self.url + path, headers=headers or {}))

    def post(self, path: str, fields: dict, file: tuple[str, bytes] | None, headers: dict | None = None
             ) -> tuple[int, bytes]:
        """A multipart/form-data POST like ``curl -F file=@x.wav -F model=...``."""
        body, content_type = multipart_body(fields, file)
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers={
            "Content-Type": content_type, **(headers or {})})
        return _request(request)

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _request(request: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_the_server_decodes_in_infer_pys_beam_by_default():
    """The server decoded greedily where infer.py --backend=ct2 uses a beam of 3: the same file read differently
    (a 0.3 s clip "我吗？" against "我妈。")."""
    port = _free_port()
    assert infer_server.server_options(infer_server.parse_args(["--backend=ct2", f"--port={port}"])).decode.beam_size \
        == infer.CT2_BEAM_SIZE == 3
    assert infer_server.server_options(infer_server.parse_args([f"--port={port}"])).decode.beam_size == 1
    assert infer_server.server_options(infer_server.parse_args(["--backend=ct2", "--beam_size=5", f"--port={port}"])
                                       ).decode.beam_size == 5
    with pytest.raises(SystemExit):
        infer_server.parse_args(["--beam_size=0", f"--port={port}"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    # CTranslate2's own encoder on every CPU: these tests are about the API, and auto's encoder depends on the CPU
    # (PyTorch bf16 with AMX hears the clip's borderline "jumps over the" as "dumb, sober", as an exact float32
    # encoder does before the int8 decoder); each encoder's hearing is tested in test_transcribe.py
    # a limit far above any wait here: on a loaded 2-core machine (load average 5-6) a request of the fifty-request
    # test waited past 120 s and was answered 504; the limit itself is tested with a server of its own
    s = Server(tmp, "--model_path=openai/whisper-base", "--backend=ct2", "--ct2_encoder=ct2", f"--api_key={KEY}",
               "--max_upload_mb=2", "--max_queue=64", "--request_timeout=900")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _wer(text: str) -> float:
    return error_rate([EN_SENTENCE], [text], "wer")


def test_openai_client_transcribes_in_every_format(server, client, en_wav):
    with open(en_wav, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert _wer(result.text) <= 0.15, result.text
    with open(en_wav, "rb") as f:
        text = client.audio.transcriptions.create(model="openai/whisper-base", file=f, response_format="text",
                                                  language="en")
    assert _wer(text.strip()) <= 0.15
    with open(en_wav, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["segment"])
    assert verbose.language == "english" and verbose.duration == pytest.approx(sf.info(en_wav).duration, abs=0.05)
    assert verbose.segments and 0 <= verbose.segments[0].start < verbose.segments[-1].end <= verbose.duration + 0.5
    for seg in verbose.segments:  # the decode's statistics, as OpenAI's segments have them (clients filter on them)
        assert -1.0 < seg.avg_logprob <= 0 and 0 <= seg.no_speech_prob < 0.5 and seg.temperature == 0.0
        assert 0 < seg.compression_ratio < 2.4 and seg.seek >= 0 and seg.tokens
    assert all(t < 50257 for seg in verbose.segments for t in seg.tokens)  # the text's tokens only
    with open(en_wav, "rb") as f:
        worded = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                    timestamp_granularities=["word", "segment"])
    assert [w.word.strip(".").lower() for w in worded.words][:3] == ["the", "quick", "brown"]
    assert all(0 <= w.start <= w.end <= worded.duration for w in worded.words)
    with open(en_wav, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    with open(en_wav, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT")
    with open(en_wav, "rb") as f:
        translated = client.audio.translations.create(model="whisper-1", file=f)
    assert _wer(translated.text) <= 0.15  # English speech "translated" to English is its transcript


def test_prompt_and_language_reach_the_decoder(server, tmp_path):
    """The form's prompt is the decoder's previous text: a rare name misheard without it is right with it."""
    wav = make_speech("My colleague Szymanski will call you back.", tmp_path / "name.wav")
    data = wav.read_bytes()
    status, plain = server.post("/v1/audio/transcriptions", {"model": "whisper-1", "response_format": "text",
                                                             "language": "en"}, ("name.wav", data), AUTH)
    assert status == 200 and "Szymanski" not in plain.decode()
    status, prompted = server.post("/v1/audio/transcriptions",
                                   {"model": "whisper-1", "response_format": "text", "language": "en",
                                    "prompt": "Szymanski"}, ("name.wav", data), AUTH)
    assert status == 200 and "Szymanski" in prompted.decode(), prompted


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["openai/whisper-base"]
    health = server.health()
    assert health["status"] == "ok" and "openai/whisper-base" in health["models"]
    assert "a window alone decodes on" in server.log.read_text()  # the model was tuned for requests of short files


def test_a_model_can_be_retrieved_by_id(server, client):
    """GET /v1/models/{id} was a 404, so client.models.retrieve() failed for every model, the alias too."""
    from openai import NotFoundError

    assert client.models.retrieve("openai/whisper-base").id == "openai/whisper-base"
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    status, body = server.get("/v1/models/", AUTH)  # the list, not a model named ""
    assert status == 200 and json.loads(body)["object"] == "list", body
    with pytest.raises(NotFoundError) as e:
        client.models.retrieve("whisper-large-v9")
    assert e.value.code == "model_not_found" and "is not served here" in str(e.value)


def test_translations_report_english_and_check_the_spoken_language(server, zh_wav):
    """A translation's verbose_json named the source language ("chinese" for English speech too; OpenAI's is the
    output's, english), and its language field was dropped unread (language=klingon: 200)."""
    wav = ("zh.wav", zh_wav.read_bytes())
    status, body = server.post("/v1/audio/translations", {"model": "whisper-1", "response_format": "verbose_json",
                                                          "language": "zh"}, wav, AUTH)
    assert status == 200, body
    reply = json.loads(body)
    assert reply["task"] == "translate" and reply["language"] == "english" and reply["text"]
    status, body = server.post("/v1/audio/translations", {"model": "whisper-1", "language": "klingon"}, wav, AUTH)
    assert status == 400 and json.loads(body)["error"]["param"] == "language", body


@pytest.mark.parametrize("case", ["no key", "wrong key", "unknown model", "no file", "bad audio", "empty file",
                                  "too large", "bad format", "bad language", "language not in the model",
                                  "bad temperature", "bad granularity", "stream"])
def test_bad_requests_get_clear_errors(server, en_wav, case):
    wav = ("en.wav", en_wav.read_bytes())
    fields, file, headers = {"model": "whisper-1"}, wav, AUTH
    expected = {"no key": 401, "wrong key": 401, "unknown model": 404, "too large": 413}.get(case, 400)
    if case == "no key":
        headers = {}
    elif case == "wrong key":
        headers = {"Authorization": "Bearer nope"}
    elif case == "unknown model":
        fields["model"] = "whisper-large-v9"
    elif case == "no file":
        file = None
    elif case == "bad audio":
        file = ("clip.mp3", b"this is not audio at all" * 100)
    elif case == "empty file":
        file = ("clip.wav", b"")
    elif case == "too large":
        file = ("big.wav", b"\0" * (3 * 1024 * 1024))
    elif case == "bad format":
        fields["response_format"] = "xml"
    elif case == "bad language":
        fields["language"] = "klingon"
    elif case == "language not in the model":  # Cantonese came with large-v3: whisper-base read garbage
        fields["language"] = "yue"
    elif case == "bad temperature":
        fields["temperature"] = "2"
    elif case == "bad granularity":
        fields.update({"response_format": "verbose_json", "timestamp_granularities[]": ["syllable"]})
    elif case == "stream":  # was ignored: OpenAI's client then read no event and no text, without an error
        fields["stream"] = "true"
    status, body = server.post("/v1/audio/transcriptions", fields, file, headers)
    assert status == expected, body
    error = json.loads(body)["error"]
    assert error["message"] and "Traceback" not in error["message"]
    if case == "unknown model":
        assert "openai/whisper-base" in error["message"]
    if case in ("bad audio", "empty file"):
        assert file[0] in error["message"]
    if case == "too large":  # the upload's size next to the limit
        assert "(3.0 MB)" in error["message"] and "limit of 2 MB" in error["message"], error
    if case == "no file":  # a JSON or raw audio body: say what the server takes
        assert "multipart/form-data request (this one: multipart/form-data; boundary=" in error["message"], error
    if case == "stream":
        assert error["param"] == "stream", error
    if case == "language not in the model":
        assert error["param"] == "language" and error["message"].startswith(
            "model openai/whisper-base: language yue: this model has no <|yue|> token"), error


def test_an_upload_far_over_the_limit_is_refused_with_its_size_from_content_length(server):
    """The server stops reading a refused body at DRAIN_FACTOR times the limit: a 30 MB upload against 2 MB was
    "at least 8.3 MB" (the README says the message gives the upload's size); a client that says its length gets it.
    (A raw socket, as curl sends: it reads the answer while it still has body to send.)"""
    from utils.server import DRAIN_FACTOR

    host, port = server.url.split("//")[1].split(":")
    sent = DRAIN_FACTOR * (2 * 1024 * 1024 + 64 * 1024) + 1024  # what the server reads before it answers
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {30 * 1024 * 1024}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head + b"\0" * sent)
        reply = b""
        while b"}}" not in reply and (piece := sock.recv(65536)):
            reply += piece
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    message = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert message.startswith("the upload (30.0 MB) is larger than the server's limit of 2 MB"), message


def test_a_client_gone_while_uploading_is_one_line_in_the_log(server):
    """A client that closed its connection mid-upload left "Exception in ASGI application" and a 40-line traceback
    (starlette's ClientDisconnect) in the log, as if the server had failed."""
    host, port = server.url.split("//")[1].split(":")
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head + b"\0" * 20000)
    _wait_for(lambda: "went away while uploading" in server.log.read_text())
    assert "Traceback" not in server.log.read_text() and server.get("/health")[0] == 200


def test_errors_outside_the_endpoints_are_openai_shaped(server, en_wav):
    """A form field over the 1 MB part limit, an unknown path and a wrong method were answered in plain text
    ("Part exceeded maximum size of 1024KB.", "Not Found"), which OpenAI's clients cannot read."""
    wav = ("en.wav", en_wav.read_bytes())
    for status, body, expected in [
            (*server.post("/v1/audio/transcriptions", {"model": "whisper-1", "prompt": "x" * (1100 * 1024)}, wav,
                          AUTH), 400),
            (*server.post("/v1/audio/speech", {"model": "whisper-1"}, wav, AUTH), 404),
            (*server.get("/v1/audio/transcriptions", AUTH), 405)]:
        assert status == expected, body
        error = json.loads(body)["error"]
        assert error["message"] and error["type"] == "invalid_request_error", error


def test_a_request_may_ask_for_language_detection(server, en_wav):
    """language=auto was refused (400 unknown language 'auto'), though infer.py takes --language=auto: a server
    of a fine-tuned model had no way to detect a request's language."""
    status, body = server.post("/v1/audio/transcriptions", {"model": "whisper-1", "language": "auto",
                                                            "response_format": "verbose_json"},
                               ("en.wav", en_wav.read_bytes()), AUTH)
    assert status == 200, body
    assert json.loads(body)["language"] == "english"


def test_fifty_requests_from_eight_threads_all_answered(server, client, tmp_path):
    """A bounded local load test: every answer is right and the same; nothing is left in the server's TMPDIR
    (an mp3 goes through ffmpeg's temporary copy)."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t",
                    "0.1", str(tmp_path / "warm.mp3")], check=True)
    wav = make_speech("Please send the report before Friday.", tmp_path / "load.wav")
    mp3 = tmp_path / "load.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), str(mp3)], check=True)

    def one(i: int) -> str:
        path = mp3 if i % 5 == 0 else wav
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f, language="en").text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(50)))
    assert len(texts) == 50
    for text in texts:
        assert error_rate(["Please send the report before Friday."], [text], "wer") <= 0.2, text
    health = server.health()["models"]["openai/whisper-base"]
    assert health["queued"] == 0 and health["running"] == 0 and health["done"] >= 50
    # onnxruntime (the VAD's, 1.31+) writes its telemetry session id, ".ses", into TMPDIR when it is imported
    assert [p for p in server.tmpdir.iterdir() if p.name != ".ses"] == []


def test_full_queue_is_503_and_slow_request_is_504(tmp_path, zh_wav):
    """One model, one waiting place, a 1 s limit: a long recording runs past the limit (504); while it runs
    and another waits, a third request is refused at once (503). Stopping the server then waits for neither."""
    s = Server(tmp_path, "--model_path=openai/whisper-base", "--backend=transformers", "--max_queue=1",
               "--request_timeout=1")
    try:
        audio, sr = sf.read(zh_wav, dtype="float32")
        long_wav = tmp_path / "long.wav"
        # ~80 s: still decoding well after both 504s on a fast CPU; nothing waits for its end
        sf.write(long_wav, np.tile(np.concatenate([audio, np.zeros(sr // 2, np.float32)]), 16), sr)
        data = ("long.wav", long_wav.read_bytes())
        results: dict[str, int] = {}

        messages: dict[str, str] = {}

        def send(name: str) -> None:
            results[name], body = s.post("/v1/audio/transcriptions", {"language": "zh"}, data)
            messages[name] = json.loads(body)["error"]["message"]

        first = threading.Thread(target=send, args=("first",))
        first.start()
        _wait_for(lambda: s.health()["models"]["openai/whisper-base"]["running"] == 1)
        second = threading.Thread(target=send, args=("second",))
        second.start()
        _wait_for(lambda: s.health()["models"]["openai/whisper-base"]["queued"] == 1)
        t0 = time.monotonic()
        status, body = s.post("/v1/audio/transcriptions", {}, data)
        assert status == 503 and time.monotonic() - t0 < 5, body
        assert "retry later" in json.loads(body)["error"]["message"]
        first.join()
        second.join()
        assert results == {"first": 504, "second": 504}
        # the second waited behind the first: it was told to send shorter audio, as the first rightly was
        assert re.search(r"s decoding [\d.]+ s of audio\); send shorter audio", messages["first"]), messages
        assert re.match(r"the request waited the server's limit of 1 s in the queue behind other requests, not "
                        r"decoded \([\d.]+ s of audio\): retry later", messages["second"]), messages
        # the first is still decoding and the second still queued, both unwanted (the second is not counted as
        # queued: it gives up its place to a new request): SIGTERM ends the server at once (it waited 30 s for the
        # decode, then was killed)
        assert s.health()["models"]["openai/whisper-base"] == {"queued": 0, "running": 1, "done": 0}
        s.proc.terminate()
        s.proc.wait(timeout=20)
        assert "a cancelled request is still decoding; not waiting for it" in s.log.read_text()
    finally:
        s.stop()


def test_requests_that_gave_up_never_stop_the_model(tiny_whisper_dir, en_wav):
    """A request whose time ran out cancels its future (asyncio does, at the 504): while its job waits, the worker
    skips the job; once the job runs, the future can no longer be cancelled. Either way the model's one thread
    lives on and answers the next request (it died when setting a cancelled future's result)."""
    transcriber = load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu")
    audio = load_audio(str(en_wav))
    options = DecodeOptions(language="en", temperatures=(0.0,), max_new_tokens=8)
    worker = ModelWorker("tiny", transcriber, max_queue=4)

    def job() -> Job:
        return Job(audio=audio, options=options, deadline=time.monotonic() + 60)

    try:
        waiting = job()
        assert waiting.future.cancel()  # it gave up before the worker took it
        worker.submit(waiting)
        racing = job()
        worker.submit(racing)
        racing.future.cancel()  # gives up now: still waiting (skipped) or already running (not cancellable)
        answered = worker.submit(job())
        assert answered.result(timeout=60).duration == pytest.approx(len(audio) / 16000, abs=0.01)
        assert waiting.future.cancelled() and racing.future.done()
        assert worker.jobs.qsize() == 0 and worker.running == 0
    finally:
        worker.stop()
    assert not worker._thread.is_alive()


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.02)


def test_flags_are_checked_before_any_model_loads(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit):
            infer_server.parse_args([f"--port={port}"])
        assert "choose another --port" in capsys.readouterr().err
    for bad in (["--max_queue=0"], ["--request_timeout=0"], ["--language=klingon"],
                ["--model_path=openai/whisper-base", "--model_path=openai/whisper-base"]):
        with pytest.raises(SystemExit):
            infer_server.parse_args([*bad, f"--port={_free_port()}"])
        assert "error:" in capsys.readouterr().err
    from utils.models import packaged_ct2_dir

    ct2_dir = str(packaged_ct2_dir("openai/whisper-base"))  # one server, one backend: mixed kinds are named
    with pytest.raises(SystemExit):
        infer_server.parse_args([f"--model_path={ct2_dir}", "--model_path=openai/whisper-base",
                                 f"--port={_free_port()}"])
    assert f"{ct2_dir} runs on ct2; openai/whisper-base runs on transformers" in capsys.readouterr().err
    assert infer_server.parse_args([f"--model_path={ct2_dir}", f"--port={_free_port()}"]).backend == "ct2"


def test_a_job_whose_request_timed_out_gives_up_its_place_in_the_queue():
    """After a 504 the job stayed queued until the worker reached it: /health said queued 1 and a new request got
    503 queue_full. Abandoned jobs are dropped when the queue is full, and not counted as queued."""
    import threading

    from utils.server import ApiError, Job, ModelWorker
    from utils.transcribe import DecodeOptions

    release = threading.Event()

    class Blocking:
        def transcribe_segments(self, audio, options):
            release.wait(30)
            return iter(()), None

    def job() -> Job:
        return Job(audio=np.zeros(160, np.float32), options=DecodeOptions(), deadline=time.monotonic() + 60)

    worker = ModelWorker("stub", Blocking(), max_queue=1)
    try:
        running, waiting = job(), job()
        worker.submit(running)
        deadline = time.monotonic() + 10
        while worker.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.submit(waiting)
        with pytest.raises(ApiError) as full:
            worker.submit(job())
        assert full.value.status == 503 and worker.queued() == 1
        waiting.cancelled.set()  # its request timed out (504)
        assert worker.queued() == 0
        worker.submit(job())  # takes the abandoned job's place
        assert worker.queued() == 1
    finally:
        release.set()
        worker.stop()


def test_audio_longer_than_the_limit_is_refused_before_it_is_decoded_whole(tmp_path):
    """--max_upload_mb bounds the upload, not the audio: a 7.6 MB opus file held 3 hours (2.3 GB of the server's
    memory, then a 504). Longer audio than --max_audio_minutes is 413, found while decoding (ffmpeg stops just past
    the limit) or from a libsndfile header."""
    import asyncio
    import io

    from utils.server import ApiError, ServerOptions, TranscriptionService

    wav = io.BytesIO()
    sf.write(wav, np.zeros(16000 * 5, np.float32), 16000, format="WAV")
    opus, m4a = tmp_path / "long.opus", tmp_path / "long.m4a"  # libsndfile reads opus' length; m4a goes to ffmpeg

    def sine(seconds, *codec, out):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=300:r=16000", "-t", str(seconds),
                        "-ac", "1", *codec, out], check=True)

    sine(600, "-c:a", "libopus", "-b:a", "6k", out=str(opus))
    sine(600, "-c:a", "aac", "-b:a", "16k", out=str(m4a))
    # FLAC written to a pipe: no length in its header (libsndfile says 2**63 - 1 frames): every one was refused
    piped = {s: subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=300:r=16000", "-t", str(s),
                                "-ac", "1", "-f", "flac", "pipe:"], check=True, capture_output=True).stdout
             for s in (1, 10)}
    service = TranscriptionService({"slow": _Slow(n=1)}, ServerOptions(max_audio_seconds=3.0))
    try:
        for name, data, said in (("a.wav", wav.getvalue(), "5.0 s"), ("long.opus", opus.read_bytes(), "600.0 s"),
                                 ("long.m4a", m4a.read_bytes(), "at least 4.0 s"),
                                 ("pipe.flac", piped[10], "at least 4.0 s")):
            with pytest.raises(ApiError) as e:
                asyncio.run(service.transcribe(data, name, {}, translate=False))
            assert e.value.status == 413 and e.value.code == "audio_too_long", e.value.message
            assert f"{name}: {said} of audio, more than the limit of 3 s" in e.value.message
            assert "--max_audio_minutes" in e.value.message
        short = io.BytesIO()
        sf.write(short, np.zeros(16000, np.float32), 16000, format="WAV")
        for name, data in (("b.wav", short.getvalue()), ("short_pipe.flac", piped[1])):
            transcript, _ = asyncio.run(service.transcribe(data, name, {}, translate=False))
            assert transcript.text == "x", name
    finally:
        service.close()
    assert infer_server.server_options(infer_server.parse_args([f"--port={_free_port()}"])).max_audio_seconds == 7200
    assert infer_server.server_options(infer_server.parse_args(
        ["--max_audio_minutes=0", f"--port={_free_port()}"])).max_audio_seconds is None


class _Slow:
    """A stand-in model whose decode hands over one segment every 50 ms for ``n`` segments (as batches do)."""

    multilingual = True

    def __init__(self, n: int = 400) -> None:
        self.n, self.started = n, threading.Event()

    def check_language(self, language, flag="--language="):
        pass

    def check_task(self, task, language=None, flag="--task="):
        pass

    def transcribe_segments(self, audio, options):
        from utils.transcribe import Segment, TranscriptionInfo

        def segments():
            self.started.set()
            for i in range(self.n):
                time.sleep(0.05)
                yield Segment(i * 0.1, i * 0.1 + 0.1, "x")

        return segments(), TranscriptionInfo("en", 1.0, self.n * 0.1, self.n)


def test_a_request_whose_client_went_away_frees_the_model():
    """A client that disconnects: its running job stops at the next segment and its queued job is dropped (before,
    both were decoded in full for nobody; a 3.7 s request waited 52.7 s behind them), and the model answers the next
    request."""
    import asyncio
    import io

    from utils.server import ApiError, ServerOptions, TranscriptionService

    wav = io.BytesIO()
    sf.write(wav, np.zeros(1600, np.float32), 16000, format="WAV")
    slow = _Slow()
    service = TranscriptionService({"slow": slow}, ServerOptions(request_timeout=120), max_queue=4)
    worker = service.workers["slow"]

    async def scenario():
        left_running, left_queued = asyncio.Event(), asyncio.Event()

        async def running_gone():
            return left_running.is_set()

        async def queued_gone():
            return left_queued.is_set()

        running = asyncio.ensure_future(service.transcribe(wav.getvalue(), "a.wav", {}, translate=False,
                                                           gone=running_gone))
        await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 10)
        queued = asyncio.ensure_future(service.transcribe(wav.getvalue(), "b.wav", {}, translate=False,
                                                          gone=queued_gone))
        await asyncio.sleep(0.3)
        assert worker.running == 1 and worker.queued() == 1
        t0 = time.monotonic()
        # both clients disconnect, the waiting one noticed first: the other way round the worker may take the queued
        # job up before its own poll has seen its client leave (a busy CI machine did), and stop it at its first check
        left_queued.set()
        for _ in range(100):
            if worker.queued() == 0:
                break
            await asyncio.sleep(0.05)
        left_running.set()
        for task in (running, queued):
            with pytest.raises(ApiError) as e:
                await task
            assert e.value.status == 499
        assert time.monotonic() - t0 < 3  # not the 20 s the decode would take
        for _ in range(100):
            if worker.running == 0:
                break
            await asyncio.sleep(0.05)
        assert worker.running == 0 and worker.queued() == 0 and worker.done == 1  # the queued one never ran
        slow.n = 2
        transcript, _ = await service.transcribe(wav.getvalue(), "c.wav", {}, translate=False)
        assert transcript.text == "x x"

    try:
        asyncio.run(scenario())
    finally:
        service.close()


def test_a_shutdown_answers_the_running_request_at_once_not_after_its_batch():
    """The second Ctrl-C said "open requests answered 503" but a request whose file was one batch got its 503 only
    when the batch was decoded (11-15 s for 44 s of audio, the result thrown away); now at once, and the worker
    lives on to finish the batch without failing."""
    import asyncio
    import io

    from utils.server import ApiError, ServerOptions, TranscriptionService

    class OneBatch(_Slow):
        def transcribe_segments(self, audio, options):
            from utils.transcribe import Segment, TranscriptionInfo

            def segments():
                self.started.set()
                time.sleep(3)  # one batch of chunks, decoded in one go
                yield Segment(0.0, 1.0, "x")

            return segments(), TranscriptionInfo("en", 1.0, 1.0, 1)

    wav = io.BytesIO()
    sf.write(wav, np.zeros(1600, np.float32), 16000, format="WAV")
    model = OneBatch()
    service = TranscriptionService({"one": model}, ServerOptions(request_timeout=120), max_queue=4)

    async def scenario():
        running = asyncio.ensure_future(service.transcribe(wav.getvalue(), "a.wav", {}, translate=False))
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 10)
        t0 = time.monotonic()
        service.cancel_all()
        with pytest.raises(ApiError) as e:
            await running
        assert e.value.status == 503 and time.monotonic() - t0 < 2  # not the 3 s left of the batch
        transcript, _ = await service.transcribe(wav.getvalue(), "b.wav", {}, translate=False)
        assert transcript.text == "x"  # the worker finished the batch and took the next job

    try:
        asyncio.run(scenario())
    finally:
        service.close()


def test_a_third_stop_signal_forces_the_exit_whichever_signal_it_is():
    """uvicorn forces its exit on a second SIGINT only: a third SIGTERM (``kill``, a service manager) left the
    server waiting for the batch being decoded."""
    import signal

    import uvicorn

    import infer_server

    class Service:
        cancelled = 0

        def open_jobs(self) -> int:
            return 1

        def cancel_all(self) -> None:
            Service.cancelled += 1

    for sig in (signal.SIGTERM, signal.SIGINT):
        server = infer_server.stopping_server_class()(uvicorn.Config(app=lambda scope, receive, send: None), Service())
        server.handle_exit(sig, None)
        assert server.should_exit and not server.force_exit
        server.handle_exit(sig, None)
        assert not server.force_exit
        server.handle_exit(sig, None)
        assert server.force_exit, sig
    time.sleep(0.2)
    assert Service.cancelled == 2  # the second signal cancelled the open jobs (in a thread)


def test_ctrl_c_says_what_it_waits_for_and_a_second_one_answers_503_at_once(tmp_path):
    """The first Ctrl-C finishes the open requests and says how many; the second answers them 503 at once and the
    server exits without a traceback (it waited silently, and a second Ctrl-C left CancelledError tracebacks, a
    plain-text 500 and a C++ abort). The request was answered only after its batch (a 220 s file in one batch: the
    whole file), and then, answered at once, the exit around CTranslate2's still decoding threads aborted the
    process ("terminate called without an active exception", exit 134)."""
    s = Server(tmp_path, "--model_path=openai/whisper-base", "--backend=ct2", "--batch_size=24",
               "--request_timeout=600")
    try:
        # the real English recordings three times over (~220 s, no sentence twice in a window: no rereading)
        real = [load_audio(str(p)) for p in sorted((REPO_ROOT / "dataset/real").glob("en_*.flac"))]
        long_wav = tmp_path / "long.wav"
        pause = np.zeros(8000, np.float32)
        sf.write(long_wav, np.concatenate([x for _ in range(3) for a in real for x in (a, pause)]), 16000)
        results: dict[str, tuple[int, bytes]] = {}

        def send() -> None:
            results["long"] = s.post("/v1/audio/transcriptions", {"language": "en"},
                                     ("long.wav", long_wav.read_bytes()))

        sender = threading.Thread(target=send)
        sender.start()
        _wait_for(lambda: s.health()["models"]["openai/whisper-base"]["running"] == 1)
        s.proc.send_signal(__import__("signal").SIGINT)
        _wait_for(lambda: "finishing 1 open request" in s.log.read_text())
        time.sleep(1.0)
        assert s.proc.poll() is None and sender.is_alive()  # still decoding it
        t0 = time.monotonic()
        s.proc.send_signal(__import__("signal").SIGINT)
        sender.join(timeout=120)
        status, body = results["long"]
        assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down", body
        answered = time.monotonic() - t0
        assert s.proc.wait(timeout=60) in (0, 130)  # not killed: the exit around the running decode aborted (-6)
        log = s.log.read_text()
        assert "Traceback" not in log and "terminate called" not in log, log[-3000:]
        # at once, not after the batch (the whole 220 s file, tens of seconds on two cores), which then still ran
        assert answered < 5 and "still decoding" in log, (answered, log[-2000:])
    finally:
        s.stop()
