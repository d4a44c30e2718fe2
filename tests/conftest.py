"""Shared fixtures: real packaged whisper-base, a tiny random Whisper with the real tokenizer, real speech."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

EN_SENTENCE = "The quick brown fox jumps over the lazy dog."
ZH_SENTENCE = "今天天气很好，我们一起去公园散步吧。"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: where torch sees none they are deselected (not skipped), so a CPU run
    reports only what it ran; tools/gpu_check.py runs them with ``-m cuda`` on a GPU machine."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    config.hook.pytest_deselected(items=cuda_items)
    items[:] = [item for item in items if not item.get_closest_marker("cuda")]


def make_speech(text: str, path: Path, *, voice: str = "en-us", speed: int = 150) -> Path:
    """Speak ``text`` with espeak-ng into a 16 kHz mono 16-bit wav at ``path``.

    Mandarin (voice ``cmn-latn-pinyin``) is given as pypinyin TONE3 syllables.
    """
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are required for the tests (make test installs them)")
    if voice == "cmn-latn-pinyin":
        from pypinyin import Style, lazy_pinyin

        text = " ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True, errors="ignore"))
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    # -R: repeatable dither, so the same text gives the same samples in every run (int8 models can sit on the edge
    # between two words, and random dither made such a clip flip from run to run)
    subprocess.run(["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    raw.unlink()
    return path


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch intra-op thread: on a busy 2-core machine OpenMP threads spin against
    other processes and greedy decoding gets 5-10x slower; one thread is fast and steady."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def en_wav(tmp_path_factory) -> Path:
    """A clean English sentence (EN_SENTENCE), 16 kHz mono wav."""
    return make_speech(EN_SENTENCE, tmp_path_factory.mktemp("speech") / "en.wav")


@pytest.fixture(scope="session")
def zh_wav(tmp_path_factory) -> Path:
    """A clean Mandarin sentence (ZH_SENTENCE), 16 kHz mono wav."""
    return make_speech(ZH_SENTENCE, tmp_path_factory.mktemp("speech") / "zh.wav", voice="cmn-latn-pinyin")


@pytest.fixture(scope="session")
def whisper_base_dir() -> Path:
    """The real multilingual whisper-base as a transformers folder (offline: imported from its PyPI package)."""
    from utils.models import resolve_model

    return Path(resolve_model("openai/whisper-base"))


@pytest.fixture(scope="session")
def tiny_whisper_dir(whisper_base_dir, tmp_path_factory) -> Path:
    """A tiny randomly initialised Whisper (2+2 layers, d_model 64) with whisper-base's real tokenizer,
    feature extractor and generation config. Fast enough for unit tests; its output is gibberish."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    out = tmp_path_factory.mktemp("tiny-whisper")
    config = WhisperConfig.from_pretrained(whisper_base_dir)
    config.update(dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128))
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(whisper_base_dir)
    model.generation_config.alignment_heads = [[0, 0], [1, 1]]
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(whisper_base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_translator_dir(tiny_whisper_dir, tmp_path_factory) -> Path:
    """:func:`tiny_whisper_dir` as finetune.py --task=translate saves it: "task": "translate" in its generation
    config (every consumer then translates without --task)."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("tiny") / "translator"
    shutil.copytree(tiny_whisper_dir, out)
    config = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    (out / "generation_config.json").write_text(json.dumps({**config, "task": "translate"}), encoding="utf-8")
    return out
