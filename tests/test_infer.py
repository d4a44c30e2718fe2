"""infer.py end to end with the tiny model: stdout, SRT/VTT/JSON files, many files, bad and missing files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import infer
from tests.conftest import REPO_ROOT
from utils.subtitles import format_timestamp, to_srt, to_txt, to_vtt
from utils.data import Segment
from utils.transcribe import Transcript

SRT_TIME = r"\d{2}:\d{2}:\d{2},\d{3}"
VTT_TIME = r"\d{2}:\d{2}:\d{2}\.\d{3}"


def _run(tiny_whisper_dir, *extra):
    return infer.main(["--model_path", str(tiny_whisper_dir), "--device=cpu", "--language=en", *extra])


def _check_srt(text: str) -> list[tuple[str, str]]:
    blocks = [b for b in text.strip().split("\n\n") if b]
    times = []
    for i, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(i)
        m = re.fullmatch(f"({SRT_TIME}) --> ({SRT_TIME})", lines[1])
        assert m, lines[1]
        assert m.group(1) <= m.group(2)
        assert len(lines) >= 3 and lines[2].strip()
        times.append((m.group(1), m.group(2)))
    return times


def test_format_timestamp():
    assert format_timestamp(3725.5) == "01:02:05,500"
    assert format_timestamp(0.0015, ".") == "00:00:00.002"
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_subtitle_writers_are_valid():
    t = Transcript("a b", "en", 1.0, 70.0, [Segment(0.0, 1.5, "a"), Segment(1.5, 1.5, " "), Segment(61.0, 65.25, "b")])
    srt = to_srt(t)
    assert _check_srt(srt) == [("00:00:00,000", "00:00:01,500"), ("00:01:01,000", "00:01:05,250")]
    vtt = to_vtt(t)
    assert vtt.startswith("WEBVTT\n\n")
    assert re.findall(f"{VTT_TIME} --> {VTT_TIME}", vtt) == ["00:00:00.000 --> 00:00:01.500",
                                                            "00:01:01.000 --> 00:01:05.250"]


def test_no_cue_starts_at_or_after_the_end_of_the_audio():
    """Five zero-length segments at 51.912 s of a 52.204 s file (a decoder loop's tail) became cues of 1 ms at and
    after 52.204 s; pieces left no room join the cue before them, for segments and for words."""
    from utils.data import Word

    segs = [Segment(48.948, 51.668, "ask what you can do")] + [Segment(51.912, 51.912, "我也是在香港的")] * 5
    for text in (to_srt(Transcript("x", "zh", 1.0, 52.204, segs)),
                 to_vtt(Transcript("x", "zh", 1.0, 52.204, segs)).replace(".", ",")):
        times = re.findall(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", text)
        seconds = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for t in times
                   for h, m, s, ms in (t[:4], t[4:])]
        spans = list(zip(seconds[::2], seconds[1::2]))
        assert all(start < end <= 52.204 for start, end in spans), text
        assert text.count("我也是在香港的") == 5
    words = [Word(0.5, 1.0, "go", 0.9), *[Word(4.0, 4.0, f"w{i}", 0.9) for i in range(5)]]
    cues = to_srt(Transcript("x", "en", 1.0, 4.0, [Segment(0.5, 4.0, "go w0 w1 w2 w3 w4", words)]), words=True)
    assert all(t < "00:00:04,000" for t in re.findall(r"\d\d:\d\d:\d\d,\d{3}(?= -->)", cues)), cues
    assert all(f"w{i}" in cues for i in range(5))


def test_long_segments_are_cut_into_cues_of_two_lines_and_cues_never_overlap():
    """A 28 s segment of 92 characters was one cue on one line; zero-length words got 1 ms cues that overlapped the
    next. Cues now hold two lines of 42 columns (a Chinese character takes two), cut after punctuation with the time
    shared by length, or at timed words (and at pauses of a second between them); each lasts 0.1 s at least."""
    from utils.data import Word
    from utils.subtitles import CueLayout, text_width, wrap_lines

    zh = "今天天气很好？我们去公园散步吧。请把门关上外面有点吵。你周末打算做什么？我周末想去看电影。" * 2
    t = Transcript(zh, "zh", 1.0, 40.0, [Segment(0.0, 28.0, zh), Segment(28.0, 29.0, "好。")])
    cues = _check_srt(to_srt(t))
    blocks = [b.split("\n")[2:] for b in to_srt(t).strip().split("\n\n")]
    assert len(cues) == 6 and all(len(lines) <= 2 and all(text_width(x) <= 42 for x in lines) for lines in blocks)
    assert "".join("".join(lines) for lines in blocks) == zh + "好。"  # nothing lost or repeated
    assert cues[0][0] == "00:00:00,000" and cues[4][1] == "00:00:28,000" and cues[5][1] == "00:00:29,000"
    assert all(_seconds(b) - _seconds(a) <= 7.0 for a, b in cues)  # at most 7 s each: 4 cues would hold 28 s
    assert all(a[1] <= b[0] for a, b in zip(cues, cues[1:]))  # times in order, shared by length
    assert blocks[0][-1].endswith(("。", "？"))  # cut after punctuation
    one = to_srt(t, layout=CueLayout(0, 0))  # no limit: a cue per segment, as before
    assert len(_check_srt(one)) == 2 and zh in one
    assert wrap_lines("The quick brown fox jumps over the lazy dog and runs away.", 42) == [
        "The quick brown fox jumps over", "the lazy dog and runs away."]  # even lines, broken between words
    with pytest.raises(ValueError):
        CueLayout(-1, 2)
    en = "He began a confused complaint against the wizard who had vanished behind the curtain on the left."
    halves = [b.split("\n")[2:] for b in to_srt(Transcript(en, "en", 1.0, 20.0, [Segment(11.0, 16.0, en)]))
              .strip().split("\n\n")]  # as many cues as needed, even in length: not "on the left." alone
    assert len(halves) == 2 and " ".join(" ".join(h) for h in halves) == en
    assert abs(len(" ".join(halves[0])) - len(" ".join(halves[1]))) <= 10, halves

    words = (Word(2.8, 2.8, " every", 0.9), Word(2.8, 2.8, " day", 0.9), Word(2.8, 2.8, " morning.", 0.9),
             Word(5.0, 5.4, " Then", 0.9))
    w = Transcript("every day morning. Then", "en", 1.0, 6.0, [Segment(2.8, 5.4, "every day morning. Then", words)])
    word_cues = _check_srt(to_srt(w, words=True))
    assert word_cues == [("00:00:02,800", "00:00:02,900"), ("00:00:02,900", "00:00:03,000"),
                         ("00:00:03,000", "00:00:03,100"), ("00:00:05,000", "00:00:05,400")]
    # cut at the pause; a cue of text stays up 0.8 s at least (into the pause, not past the file's end)
    assert _check_srt(to_srt(w)) == [("00:00:02,800", "00:00:03,600"), ("00:00:05,000", "00:00:05,800")]
    end = Transcript("Thanks.", "en", 1.0, 5.5, [Segment(5.0, 5.3, "Thanks.")])
    assert _check_srt(to_srt(end)) == [("00:00:05,000", "00:00:05,500")]


def test_cues_of_random_transcripts_keep_their_text_order_and_layout():
    """Random segments (English, Chinese, mixed; with and without word times, zero-length words, long pauses) in
    random layouts: the cues hold every character once, in order, none overlapping or empty or past the end, each
    within its line count (a word wider than a line aside), none over 7 s where words or clauses could be cut. Also
    the time it takes stays linear: a 2,000-character segment without punctuation is cut by a dynamic program."""
    import random

    from utils.data import Word
    from utils.subtitles import MAX_CUE_S, CueLayout, text_width

    rng = random.Random(7)
    en = "the quick brown fox jumps over lazy dog and runs away, to be or not. extraordinarily".split()
    zh = ["我们", "今天", "银行", "工作，", "好的。", "什么？", "一", "的", "中华人民共和国"]
    for _ in range(300):
        segments, t = [], rng.uniform(0, 3)
        language = rng.choice(["en", "zh", "mix"])
        for _ in range(rng.randint(1, 4)):
            tokens = [rng.choice(en if language == "en" or (language == "mix" and rng.random() < 0.5) else zh)
                      for _ in range(rng.randint(1, 60))]
            text = ""
            for token in tokens:
                text += "" if not text or (text_width(token[0]) == 2 and text_width(text[-1]) == 2) else " "
                text += token
            if rng.random() < 0.6:
                words = []
                for token in tokens:
                    d = rng.choice([0.0, 0.1, 0.3, 0.5])
                    words.append(Word(round(t, 3), round(t + d, 3), token, 0.9))
                    t += d + rng.choice([0.0, 0.0, 0.05, 1.2])
                segments.append(Segment(words[0].start, words[-1].end, text, tuple(words)))
            else:
                d = rng.uniform(0, 15)
                segments.append(Segment(round(t, 3), round(t + d, 3), text))
                t += d
            t += rng.uniform(0, 3)
        duration = t + 1.0
        layout = CueLayout(rng.choice([0, 16, 42]), rng.choice([0, 1, 2]))
        srt = to_srt(Transcript(" ".join(x.text for x in segments), language, 1.0, duration, segments),
                     layout=layout)
        cues = _check_srt(srt)
        blocks = [b.split("\n")[2:] for b in srt.strip().split("\n\n")]
        said = "".join(x.text for x in segments).replace(" ", "")
        assert "".join("".join(b) for b in blocks).replace(" ", "") == said
        times = [(_seconds(a), _seconds(b)) for a, b in cues]
        assert all(a < b <= duration + 1e-3 for a, b in times) and all(x[1] <= y[0] for x, y in zip(times, times[1:]))
        if layout.max_line_width and layout.max_line_count:
            for lines in blocks:
                assert len(lines) <= layout.max_line_count or any(
                    text_width(w) > layout.max_line_width for line in lines for w in line.split()), (layout, lines)
    text = "甚至出现交易几乎停滞的情况" * 150
    long = Transcript(text, "zh", 1.0, 600.0, [Segment(0.0, 500.0, text)])
    cues = _check_srt(to_srt(long))
    assert len(cues) >= 500 / MAX_CUE_S and all(_seconds(b) - _seconds(a) <= MAX_CUE_S + 1e-3 for a, b in cues)


def test_the_text_file_has_a_line_per_segment():
    """A long recording's .txt was one line (3,074 bytes for 5.7 minutes), whatever its pauses."""
    t = Transcript("今天天气很好。我们去公园吧。", "zh", 1.0, 20.0,
                   [Segment(0.0, 3.0, "今天天气很好。"), Segment(3.0, 5.0, " "), Segment(9.0, 11.0, "我们去公园吧。")])
    assert to_txt(t) == "今天天气很好。\n我们去公园吧。\n"
    assert to_txt(Transcript("", "zh", 1.0, 20.0, [])) == "\n"


def _seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_cues_built_from_words_keep_their_spaces_and_break_where_they_read_well():
    """Words are kept without their leading space: cues built from them (a segment too long for one cue, or with a
    pause between words) read "asknotwhatyourcountrycandoforyou,…" on one 93-column line. Lines and cues were broken
    by length alone: 我已经等了你半个小时了？这个/字怎么写？, 银 and 行 in two cues; a 10.5 s segment was one cue."""
    from utils.data import Word
    from utils.subtitles import CueLayout, wrap_lines

    text = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."

    def at(k: int) -> float:  # word k's start: a 1.2 s pause after "Americans,"
        return round(0.3 + 0.35 * k + (1.2 if k >= 5 else 0), 2)

    words = tuple(Word(at(k), round(at(k) + 0.3, 2), w, 0.9) for k, w in enumerate(text.split()))
    t = Transcript(text, "en", 1.0, 12.0, [Segment(0.3, words[-1].end, text, words)])
    blocks = [b.split("\n")[2:] for b in to_srt(t).strip().split("\n\n")]
    assert " ".join(" ".join(lines) for lines in blocks) == text
    assert all(len(line) <= 42 for lines in blocks for line in lines) and blocks[0] == ["And so my fellow Americans,"]
    assert wrap_lines("我已经等了你半个小时了？这个字怎么写？我在一家银行工作，", 42) == [
        "我已经等了你半个小时了？", "这个字怎么写？我在一家银行工作，"]
    zh = ("这个", "字", "怎么", "写？", "我", "在", "一家", "银行", "工作，", "不好意思？", "我来", "玩", "了？")
    zh_words = tuple(Word(20.0 + 0.5 * k, 20.5 + 0.5 * k, w, 0.9) for k, w in enumerate(zh))
    cues = to_srt(Transcript("".join(zh), "zh", 1.0, 30.0, [Segment(20.0, 26.5, "".join(zh), zh_words)]),
                  layout=CueLayout(16, 1))
    texts = [b.split("\n")[2] for b in cues.strip().split("\n\n")]
    assert texts == ["这个字怎么写？", "我在一家银行", "工作，不好意思？", "我来玩了？"]  # 我在一家银行工作，: 18 columns
    long = "甚至出现交易几乎停滞的情况。" * 3  # 42 characters said in 10.5 s: fits two lines, not one cue's 7 s
    cues = _check_srt(to_srt(Transcript(long, "zh", 1.0, 20.0, [Segment(0.0, 10.5, long)])))
    assert len(cues) == 2 and all(_seconds(b) - _seconds(a) <= 7.0 for a, b in cues)
    assert len(_check_srt(to_srt(Transcript(long, "zh", 1.0, 20.0, [Segment(0.0, 10.5, long)]),
                                 layout=CueLayout(42, 0)))) == 1  # no line limit: a cue per segment
    # a clause or a word is not cut for time alone (谢谢。 said over 8 s was 谢 / 谢。 at made-up times) ...
    assert _check_srt(to_srt(Transcript("谢谢。", "zh", 1.0, 20.0, [Segment(0.0, 8.0, "谢谢。")]))) == [
        ("00:00:00,000", "00:00:08,000")]
    bank = (Word(0, 0.5, "we", 0.9), Word(0.5, 1, "went", 0.9), Word(1, 1.5, "to", 0.9), Word(1.5, 2, "the", 0.9),
            Word(2, 9.5, "bank", 0.9))
    cues = _check_srt(to_srt(Transcript("", "en", 1.0, 20.0, [Segment(0, 9.5, "we went to the bank", bank)])))
    assert cues == [("00:00:00,000", "00:00:02,000"), ("00:00:02,000", "00:00:09,500")]  # "bank" when it starts
    assert wrap_lines("I met with Mr. Johnson and Dr. Smith at the bank on Main Street today", 42) == [
        "I met with Mr. Johnson and Dr. Smith", "at the bank on Main Street today"]  # not after "Dr."
    # ... nor after "Mrs." where a line of plain words is as even (the title ended one line, the name began the next),
    # and a title is no clause of its own without word times (a 0.47 s cue read "And Mr.")
    assert wrap_lines("We all went over to see Mrs. Brown about the old house.", 42) == [
        "We all went over to see", "Mrs. Brown about the old house."]
    from utils.subtitles import _units

    assert [u[2] for u in _units(Segment(0.0, 6.0, "And Mr. John Dashwood left. Then we ate."))] == [
        "And Mr. John Dashwood left. ", "Then we ate."]
    assert wrap_lines("He asked me twice and I said no. We left the building after that", 42) == [
        "He asked me twice and I said no.", "We left the building after that"]  # "no." ends a sentence
    # full-width punctuation after a word or a number stays at the end of its line (a line read "，CPU 是 Intel")
    mixed = "服务的 latency 是 200ms，GPU 利用率 95%，CPU 是 Intel Xeon。"
    for width in range(8, 24):
        lines = wrap_lines(mixed, width)
        assert "".join(lines).replace(" ", "") == mixed.replace(" ", "")
        assert not any(line[0] in "，。" for line in lines), (width, lines)
    for text in ("我们用CPU（中央处理器）来计算这个问题的答案好不好呢", "版本v2.0「稳定版」已经发布了吗我们来看看"):
        assert not any(line[-1] in "（「" for line in wrap_lines(text, 10)), wrap_lines(text, 10)  # opening marks


def test_single_file_to_stdout_and_all_formats(tiny_whisper_dir, en_wav, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    rc = _run(tiny_whisper_dir, "--audio_path", str(en_wav), "--timestamps", "--output_format=all",
              f"--output_dir={out}", "--use_bettertransformer=True", "--fallback=False")
    assert rc == 0
    stdout = capsys.readouterr()
    data = json.loads((out / "en.json").read_text(encoding="utf-8"))
    assert data["language"] == "en" and data["duration"] > 1.0
    assert data["audio"] == str(en_wav)  # which input it came from (names may get _1, _2 when stems repeat)
    assert (out / "en.txt").read_text(encoding="utf-8") == "".join(s["text"].strip() + "\n" for s in data["segments"])
    for seg in data["segments"]:
        assert f"] {seg['text']}" in stdout.out
        assert seg["temperature"] == 0.0 and seg["avg_logprob"] <= 0 and 0 <= seg["no_speech_prob"] <= 1  # the JSON
        assert seg["seek"] >= 0 and seg["compression_ratio"] > 0 and seg["tokens"]  # has the decode's statistics
    assert "SDPA" in caplog.text  # the deprecated flag is accepted with a message
    _check_srt((out / "en.srt").read_text(encoding="utf-8"))
    assert (out / "en.vtt").read_text(encoding="utf-8").startswith("WEBVTT")


@pytest.mark.parametrize("flags, timestamps", [(["--output_format=srt"], True), (["--output_format=all"], True),
                                               (["--output_format=txt"], False), ([], False),
                                               (["--output_format=vtt", "--timestamps=False"], False)])
def test_subtitles_turn_segment_timestamps_on_unless_told_not_to(tiny_whisper_dir, en_wav, tmp_path, monkeypatch,
                                                                 caplog, flags, timestamps):
    """Without segment times a subtitle cue is a whole chunk (one 28 s cue of 60 words, seen by a user): srt and
    vtt output decode with timestamps unless --timestamps=False says otherwise, and then it is said that the cue
    times are estimates (they were written without a word)."""
    seen = []
    transcribe = infer.transcribe_one

    def spy(engine, path, options, *, stream):
        seen.append(options.timestamps)
        return transcribe(engine, path, options, stream=stream)

    monkeypatch.setattr(infer, "transcribe_one", spy)
    assert _run(tiny_whisper_dir, "--audio_path", str(en_wav), f"--output_dir={tmp_path / 'out'}",
                "--fallback=False", *flags) == 0
    assert seen == [timestamps]
    assert ("cue's time is its chunk's" in caplog.text) == ("--timestamps=False" in flags)


def test_output_format_given_twice_writes_both(tiny_whisper_dir, en_wav, tmp_path):
    """``--output_format=srt --output_format=json`` wrote the json alone (the last flag won, silently)."""
    out = tmp_path / "out"
    assert _run(tiny_whisper_dir, "--audio_path", str(en_wav), "--output_format=srt", "--output_format=json",
                "--output_format=srt", f"--output_dir={out}", "--fallback=False") == 0
    assert sorted(p.name for p in out.iterdir()) == ["en.json", "en.srt"]
    assert "temperature" in json.loads((out / "en.json").read_text(encoding="utf-8"))["segments"][0]


def test_folder_with_bad_and_missing_files(tiny_whisper_dir, en_wav, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(en_wav, folder / "good.wav")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    rc = _run(tiny_whisper_dir, "--audio_path", str(folder), str(tmp_path / "missing.wav"),
              f"--output_dir={out}", "--fallback=False")
    assert rc == 1
    err = caplog.text
    assert "broken.wav" in err and "missing.wav: audio file not found" in err and "2 of 3 files failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]


def test_a_tilde_is_home_and_a_folder_s_videos_are_read(tiny_whisper_dir, en_wav, tmp_path, monkeypatch, caplog):
    """``--audio_path=~/x`` and ``--output_dir=~/y`` (the shell expands ~ only after a space, not after "="): the home
    folder, not a folder named "~" (before: "file(s) not found: ~/x", and output written to ./~/y). A folder's .mkv,
    .mov and .aiff recordings are read, and the files skipped for their names are listed (before: silently)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    shutil.copy(en_wav, tmp_path / "home.wav")
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mkv", "b.mov", "c.aiff"):
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(en_wav), str(folder / name)], check=True)
    (folder / "notes.txt").write_text("not audio")
    caplog.set_level("INFO")
    assert _run(tiny_whisper_dir, "--audio_path=~/home.wav", "--output_dir=~/out", "--fallback=False") == 0
    assert (tmp_path / "out" / "home.txt").is_file() and not (tmp_path / "~").exists()
    assert _run(tiny_whisper_dir, "--audio_path", str(folder), f"--output_dir={tmp_path / 'v'}", "--fallback=False") == 0
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert "1 file(s) skipped by name" in caplog.text and "notes.txt" in caplog.text


def test_flag_errors(tiny_whisper_dir, en_wav):
    with pytest.raises(SystemExit):
        _run(tiny_whisper_dir, "--audio_path", str(en_wav), "--timestamps=maybe")
    with pytest.raises(SystemExit):
        infer.main(["--audio_path", str(en_wav), "--backend=ct2", "--dtype=bfloat16"])
    with pytest.raises(SystemExit):
        infer.main(["--audio_path", str(en_wav), "--language=klingon"])


def test_beam_size_default_depends_on_the_backend():
    def beam(*flags):
        return infer.options_from_args(infer.build_parser().parse_args(["--audio_path=a.wav", *flags])).beam_size

    assert beam("--backend=ct2") == infer.CT2_BEAM_SIZE == 3  # cheap in CTranslate2, fewer errors
    assert beam("--backend=transformers") == 1  # transformers' beam search doubles the CPU time
    assert beam() == 1  # the default backend (auto) is transformers for a hub id
    assert beam("--backend=ct2", "--beam_size=1") == 1
    assert beam("--backend=transformers", "--beam_size=4") == 4
    assert beam("--backend=ct2", "--num_beams=2") == 2  # the old flag name still works


def test_backend_auto_runs_a_ct2_folder_with_ct2(en_wav, tmp_path, caplog, capsys):
    """Without --backend a CTranslate2 folder is run by ct2 (it was refused: "run it with --backend=ct2"); a
    transformers folder and a hub id stay on transformers."""
    from utils.cli import resolve_backend
    from utils.models import packaged_ct2_dir

    ct2_dir = str(packaged_ct2_dir("openai/whisper-base"))
    caplog.set_level("INFO")
    assert infer.main(["--audio_path", str(en_wav), f"--model_path={ct2_dir}", "--device=cpu",
                       "--language=en", "--fallback=False", f"--output_dir={tmp_path}"]) == 0
    assert "--backend=auto: ct2" in caplog.text
    assert "fox" in (tmp_path / "en.txt").read_text(encoding="utf-8").lower()
    assert resolve_backend("auto", ["openai/whisper-base"]) == "transformers"
    assert resolve_backend("auto", [ct2_dir, "openai/whisper-base"]) == "transformers"  # mixed: named one by one
    assert resolve_backend("auto", [ct2_dir, ct2_dir]) == "ct2"
    assert resolve_backend("transformers", [ct2_dir]) == "transformers"  # an explicit choice is kept


def test_translate_checks_the_model_and_warns_of_chinese_in_a_translation(tiny_whisper_dir, zh_wav, tmp_path,
                                                                          monkeypatch, caplog):
    """An English-only model read German speech as English sounds under --task=translate, with "detected language
    en"; a model fine-tuned to transcribe Chinese wrote Chinese into "English" translations without a word."""
    from utils.transcribe import load_transcriber

    engine = load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu")
    engine.check_task("translate", "zh")
    engine.check_task("transcribe", "en")
    engine.check_task("translate", "en")
    assert "--task=translate with language en: the speech is read as English" in caplog.text
    caplog.clear()  # a model fine-tuned on English speech to translate: the pair comes from the model itself
    monkeypatch.setattr(engine, "model_language", "en")
    engine.check_task("translate", None)
    assert "translate with language en (the language the model was fine-tuned on): the speech is read" in caplog.text
    engine.check_task("translate", "auto")
    assert caplog.text.count("translate with language en") == 1
    monkeypatch.setattr(engine, "multilingual", False)
    with pytest.raises(ValueError, match="English-only and cannot translate"):
        engine.check_task("translate")
    monkeypatch.undo()
    said = Transcript(text="This city's交通 is busy.", language="zh", language_probability=1.0, duration=2.0)
    monkeypatch.setattr(infer, "transcribe_one", lambda *a, **k: said)
    assert infer.main(["--audio_path", str(zh_wav), "--model_path", str(tiny_whisper_dir), "--task=translate",
                       "--device=cpu"]) == 0
    assert "the translation holds Chinese/Japanese characters" in caplog.text


def test_a_model_fine_tuned_to_translate_translates_by_default(tiny_translator_dir, en_wav, tmp_path, monkeypatch,
                                                                 caplog):
    """finetune.py --task=translate writes the task into the generation config, but infer.py transcribed unless
    given --task=translate again (the language is taken from the model that way already)."""
    model = tiny_translator_dir
    tasks = []
    real = infer.transcribe_one
    monkeypatch.setattr(infer, "transcribe_one", lambda engine, path, options, **k: tasks.append(options.task)
                        or real(engine, path, options, **k))
    caplog.set_level("INFO")
    for extra in ([], ["--task=transcribe"]):
        assert infer.main(["--audio_path", str(en_wav), f"--model_path={model}", "--device=cpu", "--fallback=False",
                           *extra]) == 0
    assert tasks == ["translate", "transcribe"]
    assert caplog.text.count("task translate: the one this model was fine-tuned for") == 1


def test_model_errors_exit_2(tiny_whisper_dir, en_wav, tmp_path, caplog):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert infer.main(["--audio_path", str(en_wav), "--model_path", str(empty)]) == 2
    assert str(empty) in caplog.text
    rc = infer.main(["--audio_path", str(en_wav), "--model_path", str(tiny_whisper_dir), "--device=cpu",
                     "--dtype=float16"])
    assert rc == 2 and "float16 needs a GPU" in caplog.text


@pytest.mark.slow
def test_with_amx_ct2_auto_runs_the_encoder_by_how_much_audio_there_is(en_wav, tmp_path, monkeypatch, caplog):
    """With AMX (flags faked, so on every machine) --ct2_encoder=auto takes onnxruntime int8 for a short file, where
    PyTorch's 1.5 s import costs more than its faster encoder saves, and PyTorch bf16 from
    TORCH_ENCODER_MIN_AUDIO_S of audio on (the files' headers, or ffprobe, tell before the model loads)."""
    import logging

    import numpy as np
    import soundfile as sf

    from utils import device as device_mod
    from utils.audio import SAMPLE_RATE
    from utils.transcribe import TORCH_ENCODER_MIN_AUDIO_S

    monkeypatch.delenv(device_mod.CPU_PROFILE_ENV, raising=False)
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: ["amx_bf16", "amx_tile", "avx", "avx2", "avx512_vnni"])
    quiet = tmp_path / "quiet.wav"  # long, but nothing to decode
    sf.write(quiet, np.zeros(int((TORCH_ENCODER_MIN_AUDIO_S + 1) * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    args = ["--backend=ct2", "--model_path=openai/whisper-base", "--device=cpu", "--language=English"]
    with caplog.at_level(logging.INFO, logger="utils.transcribe"):
        assert infer.main([*args, f"--audio_path={en_wav}"]) == 0
    assert "encoder onnxruntime int8" in caplog.text and "PyTorch" not in caplog.text
    # an m4a (no header libsndfile reads: ffprobe tells) beside a file that is not audio (fails, adds nothing): short
    m4a, notes = tmp_path / "short.m4a", tmp_path / "notes.txt"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(en_wav), str(m4a)], check=True)
    notes.write_text("not audio\n", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="utils.transcribe"):
        assert infer.main([*args, "--audio_path", str(m4a), str(notes)]) == 1
    assert "encoder onnxruntime int8" in caplog.text and "PyTorch" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="utils.transcribe"):
        assert infer.main([*args, f"--audio_path={quiet}"]) == 0
    assert "encoder PyTorch bfloat16" in caplog.text


def test_one_file_takes_the_recorded_lone_decoder_decision_several_files_time_it_again(en_wav, zh_wav, tmp_path,
                                                                                       monkeypatch, caplog):
    """Short files are windows decoded alone: infer.py times where that runs faster on this machine
    (CT2Transcriber.tune_lone_decoder, about 0.3 s) and records it per machine and model layout. One file takes the
    recorded decision (the test would cost what it saves) and times only when none is recorded; several files time
    again and update the record."""
    import logging

    import utils.transcribe as tr

    monkeypatch.setattr(tr, "available_cpus", lambda: 2)  # two workers and the every-thread replica on any machine
    record = tmp_path / "cache" / "lone_decoder.json"
    monkeypatch.setattr(infer, "lone_decoder_record", lambda: record)
    args = ["--backend=ct2", "--model_path=openai/whisper-base", "--device=cpu", "--ct2_encoder=ct2", "--cpu_threads=2"]
    timed = "a window alone decodes on every thread: ", "a window alone decodes on one thread: "
    for run in ("first file", "second file"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="utils.transcribe"):
            assert infer.main([*args, f"--audio_path={en_wav}"]) == 0
        assert "2 workers x 1 threads, a window alone encoded on 2 threads" in caplog.text
        if run == "first file":  # nothing recorded yet: timed once, recorded
            assert any(t in caplog.text for t in timed)
            assert len(json.loads(record.read_text(encoding="utf-8"))) == 1
        else:  # the recorded decision, no test decode
            assert "timed on this machine before" in caplog.text and not any(t in caplog.text for t in timed)
    folder = tmp_path / "two"
    folder.mkdir()
    for wav in (en_wav, zh_wav):
        (folder / wav.name).write_bytes(wav.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="utils.transcribe"):
        assert infer.main([*args, f"--audio_path={folder}"]) == 0
    assert any(t in caplog.text for t in timed)  # several files: timed again


@pytest.mark.slow
def test_ct2_command_imports_neither_torch_nor_transformers(en_wav, tmp_path):
    """The ct2 path (CTranslate2 encoder) runs without PyTorch and transformers, whose imports cost ~3 s of a
    2-core CPU's start: the language table, the device, the AMX check and the VAD (long audio: silero-vad's ONNX
    model on onnxruntime) are read without them; the transcript is still right."""
    import subprocess
    import sys

    import numpy as np
    import soundfile as sf

    from utils.audio import SAMPLE_RATE, load_audio

    speech, gap = load_audio(en_wav), np.zeros(2 * SAMPLE_RATE, np.float32)
    parts = [speech, gap] * (int(35 * SAMPLE_RATE) // (len(speech) + len(gap)) + 1)
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.concatenate(parts), SAMPLE_RATE)
    code = ("import sys, infer; rc = infer.main(sys.argv[1:]); "
            "print('imported:', 'torch' in sys.modules, 'transformers' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "--backend=ct2", "--model_path=openai/whisper-base",
                           "--ct2_encoder=ct2", "--device=auto", "--language=English", "--fallback=False",
                           f"--audio_path={long_wav}"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported: False False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.lower().count("brown fox") >= 2, proc.stdout


def test_output_names_never_clash_with_another_input():
    """Two inputs with one stem (in different folders) get distinct output names that are free of every other
    input's name too (before: a/x, b/x and c/x_1 were all written to x.txt / x_1.txt, one transcript lost), also
    where names differ only in case (macOS, Windows)."""
    assert infer._unique_stems(["a/x.wav", "b/x.wav", "c/x_1.wav"]) == ["x", "x_2", "x_1"]
    assert infer._unique_stems(["c/x_1.wav", "a/x.wav", "b/x.wav"]) == ["x_1", "x", "x_2"]
    assert infer._unique_stems(["a/X.wav", "b/x.mp3", "c/y.wav"]) == ["X", "x_1", "y"]
    names = infer._unique_stems([f"{d}/s.wav" for d in "abcd"] + ["e/s_2.wav"])
    assert len({n.casefold() for n in names}) == 5


def test_a_folder_is_scanned_without_hidden_files(tmp_path):
    """macOS leaves ``._name.wav`` copies (resource forks, not audio) and hidden folders; a folder scan skips them.
    A link to a file that is gone was skipped without a word; it is listed now, and fails as a missing file."""
    for rel in ("b.wav", "sub/a.mp3", "._b.wav", ".cache/c.wav", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "dead.wav").symlink_to(tmp_path / "gone.wav")  # a link to a moved file: kept, fails, is counted
    assert infer.collect_audio_files([str(tmp_path)]) == [str(tmp_path / "b.wav"), str(tmp_path / "dead.wav"),
                                                          str(tmp_path / "sub" / "a.mp3")]



def test_a_pattern_the_shell_left_alone_is_expanded(tmp_path, caplog):
    """A quoted glob (or one typed in Windows cmd) was one missing file: it is expanded, sorted, ``**`` recursive; a
    pattern matching nothing is named; a real file whose name holds a bracket is kept as it is."""
    for rel in ("b.wav", "a.wav", "sub/c.wav", "x.txt", "take[1].wav"):  # x.txt: not audio, left out of */
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert infer.collect_audio_files([f"{tmp_path}/*.wav"]) == [str(tmp_path / n) for n in ("a.wav", "b.wav",
                                                                                           "take[1].wav")]
    assert infer.collect_audio_files([f"{tmp_path}/**/c.wav"]) == [str(tmp_path / "sub" / "c.wav")]
    assert str(tmp_path / "x.txt") not in infer.collect_audio_files([f"{tmp_path}/*"])
    assert infer.collect_audio_files([str(tmp_path / "take[1].wav")]) == [str(tmp_path / "take[1].wav")]
    assert infer.collect_audio_files([f"{tmp_path}/*.flac"]) == [] and "no file matches this pattern" in caplog.text
    # a file named twice (by a folder and itself, or by another path) was transcribed twice, as name and name_1
    with caplog.at_level("INFO", logger="infer"):
        twice = infer.collect_audio_files([str(tmp_path / "b.wav"), f"{tmp_path}/*.wav", f"{tmp_path}/./a.wav"])
    assert twice == [str(tmp_path / n) for n in ("b.wav", "a.wav", "take[1].wav")]
    assert "2 file(s) named more than once: each transcribed once" in caplog.text

@pytest.mark.slow
def test_ct2_subtitles_keep_the_last_sentence_of_real_speech(tmp_path):
    """Five real English recordings joined (28.8 s, dataset/real/): whisper-base int8 (onnxruntime's encoder, auto's
    choice for a short file) ended its timestamped reading "… man. <|26.00|><|26.00|>" and the SRT had no "Go
    forward ten meters." (the plain text had it) on an AMX Xeon; CTranslate2's AVX2 kernels read on by themselves.
    The chunk is now read on from that timestamp (the mechanism on any CPU: test_transcribe.py's stub test)."""
    names = ["en_jfk", "en_librispeech_61-70968-0000", "en_librivox_0870", "en_librivox_0880", "en_goforward"]
    joined = tmp_path / "joined.wav"
    real = REPO_ROOT / "dataset" / "real"
    subprocess.run(["sox", *[str(real / f"{n}.flac") for n in names], str(joined)], check=True)
    out = tmp_path / "out"
    assert infer.main(["--audio_path", str(joined), "--backend=ct2", "--ct2_encoder=onnx", "--device=cpu",
                       "--output_format=all", f"--output_dir={out}"]) == 0
    srt = (out / "joined.srt").read_text(encoding="utf-8")
    cues = _check_srt(srt)
    assert "go forward" in srt.lower() and cues[-1][1] >= "00:00:27,000", srt
    assert "go forward" in (out / "joined.txt").read_text(encoding="utf-8").lower()


def test_speech_after_a_long_silence_is_timed_where_it_is_and_near_silence_reads_nothing(tmp_path):
    """A real English recording after 15 s of silence (a 22.8 s file): its cue began at 00:00:00 (the clip was
    decoded from its start, and Whisper stamps the first segment after a silence 0.00), now where the speech is. 10 s
    of a quiet room (-90 dBFS noise) and 20 s of plucked tones read "you" (whisper-base); a long recording's silence
    gives no text, and now a short file's does neither."""
    real = REPO_ROOT / "dataset" / "real"
    late, room, tones = tmp_path / "late.wav", tmp_path / "room.wav", tmp_path / "tones.wav"
    subprocess.run(["sox", str(real / "en_goforward.flac"), str(late), "pad", "15", "5"], check=True)
    # -R: the same noise and dither on every run (random draws of this room read at up to 0.04 speech probability,
    # 0.43 when the VAD raised it: a CI run read "You" there)
    subprocess.run(["sox", "-R", "-n", "-r", "16000", "-c", "1", "-b", "16", str(room), "synth", "10", "whitenoise",
                    "vol", "0.00003"], check=True)
    subprocess.run(["sox", "-R", "-n", "-r", "16000", "-c", "1", str(tones), "synth", "20", "pluck", "C4",
                    "vol", "0.5"], check=True)
    out = tmp_path / "out"
    assert infer.main(["--audio_path", str(late), str(room), str(tones), "--backend=ct2", "--device=cpu",
                       "--language=en", "--output_format=srt", f"--output_dir={out}"]) == 0
    cues = _check_srt((out / "late.srt").read_text(encoding="utf-8"))
    assert len(cues) == 1 and "00:00:14,500" <= cues[0][0] <= "00:00:15,600", cues
    assert "forward" in (out / "late.srt").read_text(encoding="utf-8").lower()
    assert (out / "room.srt").read_text(encoding="utf-8") == (out / "tones.srt").read_text(encoding="utf-8") == ""


def test_a_clip_with_20_s_of_silence_before_its_speech_reads_the_speech(tmp_path):
    """Two real AISHELL-1 sentences after 21.6 s of silence (a 29.9 s file, one window): whisper-base read the
    silence as "将将将…" over 0-25.8 s and left the sentences out (from 21.7 s: one sentence three times over the
    silence); the clip is now decoded from shortly before its speech, as a long recording's chunk is."""
    real = REPO_ROOT / "dataset" / "real"
    clip = tmp_path / "late_zh.wav"
    subprocess.run(["sox", str(real / "zh_aishell_0121.flac"), str(real / "zh_aishell_0122.flac"), str(clip),
                    "pad", "21.581", "0"], check=True)
    out = tmp_path / "out"
    assert infer.main(["--audio_path", str(clip), "--backend=ct2", "--device=cpu", "--language=zh",
                       "--output_format=srt", f"--output_dir={out}"]) == 0
    text = (out / "late_zh.srt").read_text(encoding="utf-8")
    cues = _check_srt(text)
    assert len(cues) == 2 and cues[0][0] >= "00:00:21,000", cues
    assert "甚至出现交易几乎" in text and "将将" not in text and text.count("甚至") == 1, text


def test_speech_to_the_end_of_a_one_window_file_is_all_in_its_subtitles(tmp_path):
    """JFK's sentence ending 0.26 s before the end of a 29.9 s file: the timestamped reading stopped at 28.24 s with
    "…ask what you can" and "do for your country." (1.4 s of speech after it) was in no cue; the text-only run had
    it."""
    clip = tmp_path / "jfk_end.wav"
    subprocess.run(["sox", str(REPO_ROOT / "dataset" / "real" / "en_jfk.flac"), str(clip), "pad", "18.9", "0"],
                   check=True)
    out = tmp_path / "out"
    assert infer.main(["--audio_path", str(clip), "--backend=ct2", "--device=cpu", "--language=en",
                       "--output_format=srt", f"--output_dir={out}"]) == 0
    text = (out / "jfk_end.srt").read_text(encoding="utf-8")
    _check_srt(text)
    assert "for your country" in text.replace("\n", " ").split("you can", 1)[-1], text


def test_condition_on_previous_text_times_every_sentence_where_it_is(tmp_path):
    """Three real English recordings 20 s apart, decoded with --condition_on_previous_text=True: each cue where its
    sentence is. faster-whisper's sequential decoder (which ct2 used) stretched cues over the silences
    ("[00:00.000 --> 01:10.970]" for 11 s of speech), transformers' read a sentence 12 times over them."""
    real = REPO_ROOT / "dataset" / "real"
    parts = [str(real / f"{n}.flac") for n in ("en_goforward", "en_cards_005", "en_arctic_a0007")]
    silence = tmp_path / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(silence), "trim", "0", "20"], check=True)
    joined = tmp_path / "spaced.wav"
    subprocess.run(["sox", parts[0], str(silence), parts[1], str(silence), parts[2], str(joined)], check=True)
    starts = [0.0]
    for p in parts[:-1]:
        starts.append(starts[-1] + float(subprocess.run(["soxi", "-D", p], capture_output=True, text=True,
                                                         check=True).stdout) + 20)
    out = tmp_path / "out"
    assert infer.main(["--audio_path", str(joined), "--backend=ct2", "--device=cpu", "--language=en",
                       "--condition_on_previous_text=True", "--output_format=srt", f"--output_dir={out}"]) == 0
    srt = (out / "spaced.srt").read_text(encoding="utf-8")
    cues = _check_srt(srt)
    assert len(cues) == 3 and all(w in srt.lower() for w in ("forward", "spades", "superlative")), srt
    seconds = [[int(t[:2]) * 3600 + int(t[3:5]) * 60 + int(t[6:8]) + int(t[9:]) / 1000 for t in cue] for cue in cues]
    for (start, end), at in zip(seconds, starts):
        assert at - 0.5 <= start < end <= at + 6, (seconds, starts)


@pytest.mark.parametrize("timestamps", [False, True])
@pytest.mark.parametrize("config", ["none", "partial"])
def test_a_model_folder_without_generation_config_transcribes(tiny_whisper_dir, en_wav, tmp_path, caplog, timestamps,
                                                               config):
    """A merged model saved by an older transformers (upstream's merge) has no generation_config.json, or one of a
    few fields, its language and task as forced_decoder_ids: infer.py failed with "'GenerationConfig' object has no
    attribute 'no_timestamps_token_id'" (with timestamps: "the generation config is not properly set", or garbage
    "!!!!" without an end token), and detected the language the model was fine-tuned on. Its Whisper fields come from
    the tokenizer now (the language and task from forced_decoder_ids), said in a warning."""
    import transformers

    model = tmp_path / "old-merge"
    shutil.copytree(tiny_whisper_dir, model)
    (model / "generation_config.json").unlink()
    if config == "partial":
        (model / "generation_config.json").write_text(json.dumps({
            "decoder_start_token_id": 50258, "forced_decoder_ids": [[1, 50260], [2, 50359], [3, 50363]],
            "begin_suppress_tokens": [220, 50257], "max_length": 448}), encoding="utf-8")
    out = tmp_path / "out"
    caplog.set_level("INFO")
    assert infer.main(["--audio_path", str(en_wav), f"--model_path={model}", "--device=cpu", "--backend=transformers",
                       f"--timestamps={timestamps}", "--output_format=json", f"--output_dir={out}",
                       *(["--language=zh"] if config == "none" else [])]) == 0
    lacked = re.search(r"generation_config\.json missing or incomplete \(saved by an older transformers; lacked "
                       r"([^)]*)\)", caplog.text)
    assert lacked and "no_timestamps_token_id" in lacked[1]
    assert ("eos_token_id" in lacked[1]) == (config == "partial")  # a config.json of its own holds the end token
    assert json.loads((out / "en.json").read_text(encoding="utf-8"))["language"] == "zh"
    if config == "partial":
        assert "language zh, the one the model was fine-tuned on" in caplog.text
    gc = transformers.GenerationConfig.from_pretrained(tiny_whisper_dir)
    from utils.models import complete_generation_config

    tokenizer = transformers.WhisperTokenizer.from_pretrained(tiny_whisper_dir)
    model_config = transformers.WhisperConfig.from_pretrained(tiny_whisper_dir)
    assert complete_generation_config(gc, tokenizer, model_config) == []  # complete
    gc.forced_decoder_ids = [[1, None], [2, 50359]]  # as the hub's openai models have it: still nothing to fill
    assert complete_generation_config(gc, tokenizer, model_config) == [] and getattr(gc, "task", None) is None


def test_the_original_infer_flags_run(tiny_whisper_dir, en_wav, caplog, capsys):
    """The original Whisper-Finetune's infer.py took --use_gpu, --use_flash_attention_2 and --assistant_model_path:
    its command lines stopped at "unrecognized arguments". They map onto this one's flags, said in a warning."""
    assert _run(tiny_whisper_dir, "--audio_path", str(en_wav), "--use_gpu=False", "--use_flash_attention_2=False",
                "--assistant_model_path=None", "--backend=transformers") == 0
    assert "--use_gpu=False (a flag of the original Whisper-Finetune): False is --device=cpu" in caplog.text
    assert "attention sdpa" in caplog.text
    with pytest.raises(SystemExit):
        _run(tiny_whisper_dir, "--audio_path", str(en_wav), "--assistant_model_path=openai/whisper-tiny")
    assert "decoding with an assistant (draft) model is not supported" in capsys.readouterr().err


def test_a_ct2_copy_without_language_ids_is_refused_with_the_fix(tmp_path):
    """ct2-transformers-converter on a folder whose generation config had no lang_to_id (an older tool's) wrote
    "lang_ids": []: every decode failed with IndexError in language detection, even with --language given."""
    from utils.models import packaged_ct2_dir
    from utils.transcribe import load_transcriber

    source = Path(packaged_ct2_dir("openai/whisper-base"))
    broken = tmp_path / "old-ct2"
    broken.mkdir()
    for f in source.iterdir():
        if f.name != "config.json":
            (broken / f.name).symlink_to(f)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    (broken / "config.json").write_text(json.dumps({**config, "lang_ids": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="lists no language ids .* convert it again with merge_lora.py --ct2=True"):
        load_transcriber(str(broken), "ct2")


def test_ctrl_c_ends_with_one_line_and_no_half_written_transcript(tiny_whisper_dir, en_wav, tmp_path, monkeypatch,
                                                                  capsys):
    """Ctrl-C an hour into a long file printed 95 lines of PyTorch traceback; now one line says how many files were
    done and which one was not finished, exit 130, and no output file of it."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer, "transcribe_one", interrupted)
    assert _run(tiny_whisper_dir, "--audio_path", str(en_wav), f"--output_dir={tmp_path}", "--output_format=srt") == 130
    err = capsys.readouterr().err
    assert f"interrupted: 0 of 1 files done; {en_wav} was not finished" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())
    # ... also while a transcript is written (each file is written whole or not at all)
    monkeypatch.undo()
    monkeypatch.setattr(infer, "write_transcript", interrupted)
    other = tmp_path.parent / f"{tmp_path.name}-other.wav"  # a second file (the same one twice is read once)
    shutil.copy(en_wav, other)
    assert _run(tiny_whisper_dir, "--audio_path", str(en_wav), str(other), f"--output_dir={tmp_path}",
                "--output_format=srt") == 130
    assert f"interrupted: 0 of 2 files done; {en_wav} was not finished" in capsys.readouterr().err


def test_a_long_file_shows_progress_however_few_chunks_it_has(monkeypatch):
    """A 2 h recording, mostly silence (6 chunks, fewer than a batch), showed no progress bar for minutes: the bar
    was left out by chunk count, not by length."""
    from types import SimpleNamespace

    from utils.transcribe import DecodeOptions, TranscriptionInfo

    bars = []
    monkeypatch.setattr(infer, "tqdm", lambda *a, **k: bars.append(k["disable"]) or __import__("tqdm").tqdm(*a, **k))
    for seconds in (7200.0, 30.0):
        engine = SimpleNamespace(transcribe_segments=lambda p, o, s=seconds: (iter(()), TranscriptionInfo(
            "en", 1.0, s, 6)), fixed_language=lambda o: "en")
        infer.transcribe_one(engine, "x.wav", DecodeOptions(language="en"), stream=False)
    assert bars == [False, True]


@pytest.mark.slow
def test_json_output_has_timed_segments_by_default(tmp_path):
    """--timestamps=auto turned segment timestamps on for srt and vtt only: a JSON file's segments were whole 30 s
    chunks (a 57 s file: 2 segments of 27 s). Two real sentences 1 s apart: a segment each unless asked otherwise."""
    import numpy as np
    import soundfile as sf

    from utils.audio import SAMPLE_RATE, load_audio

    real = REPO_ROOT / "dataset" / "real"
    two = np.concatenate([load_audio(real / "en_librivox_0870.flac"), np.zeros(SAMPLE_RATE, np.float32),
                          load_audio(real / "en_librivox_0880.flac")])
    sf.write(tmp_path / "two.wav", two, SAMPLE_RATE)
    spans = {}
    for timestamps in ("auto", "False"):
        out = tmp_path / timestamps
        assert infer.main([f"--audio_path={tmp_path / 'two.wav'}", "--backend=ct2", "--language=en",
                           "--output_format=json", f"--output_dir={out}", f"--timestamps={timestamps}"]) == 0
        spans[timestamps] = [(s["start"], s["end"]) for s in json.loads((out / "two.json").read_text())["segments"]]
    assert len(spans["auto"]) == 2 and spans["auto"][0][1] < 7.2 < 8.0 < spans["auto"][1][0], spans
    assert len(spans["False"]) == 1, spans
