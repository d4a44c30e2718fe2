"""The web UI end to end: a real `streamlit run` server driven by headless Chromium through Playwright.

Needs the Debian/Ubuntu ``chromium`` package (apt-get install chromium); Playwright's own browser
downloads are not used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import EN_SENTENCE

from utils.text import wer

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]
SERVER_START_TIMEOUT_S = 60
MODEL_LOAD_TIMEOUT_S = 90  # first start imports the packaged whisper-base into the cache
TRANSCRIBE_TIMEOUT_S = 90


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("chromium not found: the browser test needs it (Debian/Ubuntu: apt-get install chromium)")


def test_missing_chromium_fails_with_the_install_command(monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        _chromium()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:]
    pytest.fail(f"streamlit did not answer within {SERVER_START_TIMEOUT_S} s:\n{tail}")


@pytest.fixture
def webui_url(tmp_path):
    """A headless `streamlit run streamlit_whisper.py` with the packaged whisper-base (ct2) preselected."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "streamlit_whisper.py"),
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           "--", "--model_path", "openai/whisper-base", "--backend", "ct2", "--device", "cpu",
           "--models_dir", str(tmp_path / "models")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
def test_browser_upload_transcribe_download(webui_url, tmp_path, en_wav):
    from playwright.sync_api import expect, sync_playwright

    notes = tmp_path / "notes.txt"
    notes.write_text("not audio", encoding="utf-8")
    screenshot = tmp_path / "webui.png"
    timings = {}
    start = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(webui_url)
            expect(page.get_by_text("Whisper 语音识别 (speech recognition)")).to_be_visible(timeout=30_000)
            upload = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
            upload.wait_for(state="attached", timeout=MODEL_LOAD_TIMEOUT_S * 1000)  # shown once the model loaded
            timings["model loaded"] = time.monotonic() - start

            # 1. a file that is not audio: a readable message, no traceback
            upload.set_input_files(str(notes))
            expect(page.get_by_text("notes.txt: 不支持的文件类型")).to_be_visible(timeout=30_000)
            assert page.locator('[data-testid="stException"]').count() == 0

            # 2. speech: transcript, segments, SRT download
            upload.set_input_files(str(en_wav))
            page.get_by_role("button", name="开始转写 (transcribe)").click()
            text_box = page.get_by_label("文本 (text)")
            text_box.wait_for(timeout=TRANSCRIBE_TIMEOUT_S * 1000)
            timings["transcribed"] = time.monotonic() - start
            text = text_box.input_value()
            assert wer([EN_SENTENCE], [text]) <= 0.2, text
            expect(page.get_by_text("分段 Segments")).to_be_visible()
            expect(page.get_by_text("波形 Waveform")).to_be_visible()
            expect(page.locator('[data-testid="stVegaLiteChart"]')).to_be_visible(timeout=30_000)  # waveform
            expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()  # segment table
            with page.expect_download(timeout=30_000) as info:
                page.get_by_role("button", name="下载 SRT").click()
            download = info.value
            assert download.suggested_filename == "en.srt"
            srt = Path(download.path()).read_text(encoding="utf-8")
            assert srt.startswith("1\n00:00:00,000 --> 00:00:0"), srt
            assert "lazy dog" in srt.lower()
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    shutil.copyfile(screenshot, "/tmp/webui_screenshot.png")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()}, "transcript:", text)
