"""The benchmark and helper scripts in tools/: each starts (``--help``), and the recordings the benchmarks build are
what their figures rely on (the same file every run; noise at the SNR asked for)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = sorted(p.name for p in (REPO_ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("script", TOOLS)
def test_every_tool_starts_and_prints_its_usage(script):
    proc = subprocess.run([sys.executable, f"tools/{script}", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def test_the_joined_recording_is_the_same_file_every_time(tmp_path):
    # sox dithers when it writes 16-bit samples unless told not to (-D); that noise alone moved WER by up to 0.014
    from tools.bench_infer import build_recording

    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        wav, reference, seconds = build_recording(str(REPO_ROOT / "dataset/general/general_en.json"), 20.0, out,
                                                  sep=" ")
        digests.append(hashlib.sha256(wav.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert seconds >= 20.0 and reference.split()[:2] == ["The", "train"]


def test_the_long_form_recordings_are_shuffled_clips_the_same_every_run():
    """tools/bench_longform.py: recording k holds the clips in seed k's order with a pause of 0.3-1.5 s after each,
    until it is over the length asked for; the same samples every run, another order for another seed."""
    from tools.bench_longform import PAUSE_S, joined_recording

    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(16000 * (k + 1)).astype(np.float32) * 0.1 + k, f"s{k}") for k in range(6)]
    audio, reference = joined_recording(clips, 3, 8.0, " ")
    again, same = joined_recording(clips, 3, 8.0, " ")
    assert np.array_equal(audio, again) and reference == same
    said = [int(w[1:]) for w in reference.split()]
    assert len(set(said)) == len(said) and joined_recording(clips, 4, 8.0, " ")[1] != reference
    speech = sum(k + 1 for k in said)
    assert len(audio) / 16000 > 8.0 and speech - (said[-1] + 1) + PAUSE_S[0] * (len(said) - 1) <= 8.0
    assert speech + PAUSE_S[0] * len(said) <= len(audio) / 16000 <= speech + PAUSE_S[1] * len(said)
    whole, _ = joined_recording(clips, 0, 1000.0, "")  # fewer clips than the length asks for: all of them
    assert len(whole) / 16000 >= 21


def test_the_fast_mandarin_recording_is_dense_and_the_same_every_time(tmp_path):
    """tools/bench_infer.py --recording=zh_fast: about 8 characters per second of speech (fast Mandarin), the same
    samples every run."""
    from tools.bench_infer import GAP_S, build_fast

    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        wav, reference, seconds = build_fast(str(REPO_ROOT / "dataset/demo/test.json"), 8.0, out)
        digests.append(hashlib.sha256(wav.read_bytes()).hexdigest())
    sentences = reference.count("。") + reference.count("？")
    chars = sum("\u4e00" <= c <= "\u9fff" for c in reference)
    speech_s = seconds - GAP_S * sentences
    assert digests[0] == digests[1] and seconds >= 8.0
    assert 6.5 <= chars / speech_s <= 10.0, (chars, speech_s)


def test_noise_is_added_at_the_snr_asked_for(tmp_path):
    from tools.bench_infer import add_noise

    rate = 16000
    t = np.arange(2 * rate) / rate
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    speech[rate // 2: rate] = 0.0  # a pause: noise goes there too
    wav = tmp_path / "tone.wav"
    sf.write(wav, speech, rate, subtype="FLOAT")
    noisy, _ = sf.read(add_noise(wav, 10.0), dtype="float32")
    noise = noisy - speech
    voiced = np.abs(speech) > 10 ** (-50 / 20)
    snr = 20 * np.log10(np.sqrt(np.mean(speech[voiced] ** 2)) / np.sqrt(np.mean(noise ** 2)))
    assert snr == pytest.approx(10.0, abs=0.3)
    assert np.abs(noisy[rate // 2: rate]).max() > 0  # the pause is noisy as well
    again, _ = sf.read(add_noise(wav, 10.0), dtype="float32")
    np.testing.assert_array_equal(noisy, again)  # seeded


def test_reverb_fills_the_pause_after_speech_and_is_the_same_every_run(tmp_path):
    from tools.bench_infer import add_reverb

    rate = 16000
    t = np.arange(2 * rate) / rate
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    speech[rate:] = 0.0  # one second of tone, then a pause
    wav = tmp_path / "tone.wav"
    sf.write(wav, speech, rate, subtype="PCM_16")
    room, got_rate = sf.read(add_reverb(wav, 90.0), dtype="float32")
    assert got_rate == rate and room.ndim == 1 and len(room) == len(speech)  # mono, the tail after the end cut
    tail = room[rate + rate // 10: rate + rate // 2]  # 0.1-0.5 s after the tone stopped
    assert np.sqrt(np.mean(tail ** 2)) > 0.01  # the room still rings where the dry recording is silent
    dry, _ = sf.read(add_reverb(wav, 0.0), dtype="float32")
    assert np.sqrt(np.mean(dry[rate + rate // 10: rate + rate // 2] ** 2)) < np.sqrt(np.mean(tail ** 2)) / 4
    again, _ = sf.read(add_reverb(wav, 90.0), dtype="float32")
    np.testing.assert_array_equal(room, again)  # no dither: every run hears the same audio


def test_the_paired_test_set_joins_two_clips_and_their_sentences(tmp_path):
    from tools.bench_eval import paired_manifest
    from utils.data import load_manifest

    clips = [r for r in load_manifest(str(REPO_ROOT / "dataset/demo/test.json")) if r.sentence.strip()]
    pairs = list(load_manifest(str(paired_manifest(str(REPO_ROOT / "dataset/demo/test.json"), tmp_path))))
    assert len(pairs) == (len(clips) + 1) // 2
    assert pairs[0].sentence == clips[0].sentence + clips[1].sentence and pairs[0].language == clips[0].language
    first, _ = sf.read(pairs[0].audio_path, dtype="float32")
    assert len(first) / 16000 == pytest.approx(clips[0].duration + 0.6 + clips[1].duration, abs=0.05)
    assert pairs[0].duration == pytest.approx(len(first) / 16000, abs=0.01)


def test_cue_edges_measure_the_silence_a_cue_holds_before_and_after_its_speech():
    """tools/bench_cues.py: a cue's lead and tail are the silence between its edges and its first / last speech frame;
    a short gap inside speech counts as speech, the pause between recordings does not."""
    from tools.bench_cues import SAMPLE_RATE as SR
    from tools.bench_cues import build, cue_edges, speech_frames

    tone = (0.3 * np.sin(np.arange(SR) * 2 * np.pi * 220 / SR)).astype(np.float32)
    audio = np.concatenate([np.zeros(SR, np.float32), tone, np.zeros(SR // 10, np.float32), tone,
                            np.zeros(2 * SR, np.float32)])
    speech = speech_frames(audio)
    assert speech[int(1.0 / 0.02): int(3.1 / 0.02)].all() and not speech[: int(0.98 / 0.02)].any()
    assert cue_edges(speech, 0.5, 4.0) == pytest.approx((0.5, 0.9), abs=0.03)
    assert cue_edges(speech, 1.2, 2.0) == (0.0, 0.0) and cue_edges(speech, 3.5, 4.5) == (1.0, 0.0)
    wavs = sorted(str(p) for p in (REPO_ROOT / "dataset/real").glob("en_*.flac"))[:2]
    joined = build(wavs, [1.0, 2.0], 1)
    assert np.array_equal(joined, build(wavs, [1.0, 2.0], 1))  # the same recording every run
