import json

import numpy as np
import pytest

from utils.audio import save_wav
from utils.data import ManifestError, load_manifest, relative_audio_path


@pytest.fixture
def audio_dir(tmp_path):
    d = tmp_path / "audio"
    for name in ("a.wav", "b.wav", "c.wav"):
        save_wav(d / name, np.zeros(16000, np.float32))
    return d


def _write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l, ensure_ascii=False)) + "\n" for l in lines),
                    encoding="utf-8")
    return path


def _rec(path="audio/a.wav", sentence="你好", duration=1.0, **kw):
    return {"audio": {"path": path}, "sentence": sentence, "duration": duration, **kw}


def test_load_valid_manifest_relative_to_manifest_dir(tmp_path, audio_dir, monkeypatch):
    m = _write(tmp_path / "train.json", [
        _rec(language="Chinese"),
        _rec("audio/b.wav", "", 1.0, sentences=[]),
        _rec("audio/c.wav", "一二", 1.0, sentences=[{"start": 0, "end": 0.4, "text": "一"},
                                                   {"start": 0.5, "end": 1.0, "text": "二"}]),
    ])
    monkeypatch.chdir("/")  # works from any cwd
    man = load_manifest(m)
    assert len(man) == 3
    r0, r1, r2 = man[0], man[1], man[2]
    assert r0.audio_path == str(audio_dir / "a.wav") and r0.language == "Chinese"
    assert r1.is_nospeech and r1.sentences == ()
    assert [s.text for s in r2.sentences] == ["一", "二"]
    assert man[-1] == r2
    assert man.total_hours() == pytest.approx(3 / 3600)


def test_cwd_relative_paths_still_work(tmp_path, audio_dir, monkeypatch):
    sub = tmp_path / "lists"
    sub.mkdir()
    m = _write(sub / "train.json", [_rec("audio/a.wav")])
    monkeypatch.chdir(tmp_path)
    assert load_manifest(m)[0].audio_path == str(tmp_path / "audio/a.wav")


def test_slice_fields(tmp_path, audio_dir):
    m = _write(tmp_path / "t.json", [{"audio": {"path": "audio/a.wav", "start_time": 0.2, "end_time": 0.8},
                                      "sentence": "x", "duration": 0.6}])
    r = load_manifest(m)[0]
    assert (r.start_time, r.end_time) == (0.2, 0.8)


@pytest.mark.parametrize("line,message", [
    ("{not json", r"t\.json:2: not valid JSON"),
    ('["a"]', r"t\.json:2: expected a JSON object"),
    ({"sentence": "x", "duration": 1}, r"t\.json:2: 'audio' missing"),
    ({"audio": {}, "sentence": "x", "duration": 1}, r"t\.json:2: 'audio.path' missing"),
    ({"audio": {"path": "audio/a.wav"}, "duration": 1}, r"t\.json:2: 'sentence' missing .*no-speech"),
    ({"audio": {"path": "audio/a.wav"}, "sentence": "x"},
     r"t\.json:2: 'duration' missing \(keys: audio, sentence\)"),
    ({"audio": {"path": "audio/a.wav"}, "sentence": "x", "duration": -1}, r"'duration' must be a positive"),
    ({"audio": {"path": "audio/a.wav"}, "sentence": 3, "duration": 1}, r"'sentence' must be a string"),
    ({"audio": {"path": "audio/a.wav", "start_time": 2, "end_time": 1}, "sentence": "x", "duration": 1},
     r"'audio.end_time' \(1\) must be greater"),
    ({"audio": {"path": "audio/missing.wav"}, "sentence": "x", "duration": 1}, r"t\.json:2: 'audio.path' .* not found"),
    ({"audio": {"path": "audio"}, "sentence": "x", "duration": 1}, r"t\.json:2: 'audio.path' audio is a folder"),
    (_rec(sentences=[{"start": 0.5, "end": 0.2, "text": "x"}]), r"'sentences\[0\]' needs 0 <= start <= end"),
    (_rec(sentences=[{"start": 0, "end": 5, "text": "x"}]),
     r"'sentences\[0\]' ends at 5 s, after the clip's duration 1.0 s; fix its times, or 'duration' if that is wrong$"),
    ({"audio": {"path": "audio/a.wav", "start_time": 20.0, "end_time": 26.0}, "sentence": "x", "duration": 6.0,
      "sentences": [{"start": 20.5, "end": 25.5, "text": "x"}]},
     r"starts at 20.5 s, after the clip's duration 6.0 s; its times count from 'audio.start_time'"),
    ({"audio": {"path": "audio\\a.wav"}, "sentence": "x", "duration": 1},
     r"not found .*; it has Windows backslashes: write the path with /"),
    (_rec(sentences=[{"start": 0, "text": "x"}]), r"'sentences\[0\]' has no 'end' \(each segment needs start, end"),
    (_rec(sentences=[{"text": "x"}]), r"'sentences\[0\]' has no 'start' and no 'end'"),
    (_rec(sentences=["x"]), r"'sentences\[0\]' must be an object \{\"start\": s, .* got str"),
    # strings satisfy 0 <= start <= end as text: the message said so, and not that they must be numbers
    (_rec(sentences=[{"start": "0", "end": "0.5", "text": "x"}]),
     r"'sentences\[0\].start' must be a number of seconds, got '0': write it without quotes"),
    (_rec(sentences=[{"start": 0.5, "end": 0.9, "text": "x"}, {"start": 0, "end": 0.4, "text": "y"}]),
     r"'sentences\[1\]' starts at 0 before the previous one ends \(0.9\); the segments are not in time order: list "
     r"them by start time"),
    (_rec(sentences=[{"start": 0, "end": 0.6, "text": "x"}, {"start": 0.5, "end": 0.9, "text": "y"}]),
     r"'sentences\[1\]' starts at 0.5 before the previous one ends \(0.6\); segments must not overlap"),
    (_rec(language=5), r"'language' must be a string"),
    (_rec(audio={"path": 5}), r"t\.json:2: 'audio.path' must be a string, got int 5; give the audio file's path in"),
    (_rec(duration="2.88"), r"'duration' must be a positive number of seconds, got '2.88': write it without quotes$"),
    (_rec(duration="-1"), r"'duration' must be a positive number of seconds, got '-1'$"),  # invalid unquoted too
    (_rec(audio={"path": "audio/a.wav", "start_time": "0.5"}), r"'audio.start_time' .* got '0.5': write it without"),
    (_rec(language="Klingon"), r"t\.json:2: 'language': unknown language 'Klingon'.*or null to use --language"),
])
def test_invalid_lines_name_file_line_field(tmp_path, audio_dir, line, message):
    m = _write(tmp_path / "t.json", [_rec(), line])
    with pytest.raises(ManifestError, match=message):
        load_manifest(m)


def test_every_invalid_line_is_named_at_once(tmp_path, audio_dir):
    """Only the first invalid line was named: fixing a manifest took one run per line."""
    from utils.data import MAX_INVALID_LISTED

    m = _write(tmp_path / "t.json", [_rec(), "{not json", _rec(), _rec(path="audio/missing.wav"), _rec(duration="x")])
    with pytest.raises(ManifestError) as e:
        load_manifest(m)
    message = str(e.value)
    assert message.startswith(f"{m}: 3 invalid lines; fix them")
    assert [f"t.json:{n}:" in message for n in (1, 2, 3, 4, 5)] == [False, True, False, True, True]
    many = _write(tmp_path / "many.json", ["{bad"] * (MAX_INVALID_LISTED + 4))
    with pytest.raises(ManifestError, match=r"14 invalid lines(.|\n)*\.\.\. and 4 more$"):
        load_manifest(many)


def test_a_manifest_that_is_not_utf8_says_to_save_it_as_utf8(tmp_path, audio_dir):
    """Windows tools write GBK or UTF-16: the message was the codec's own ("'utf-8' codec can't decode byte…")."""
    text = json.dumps(_rec(sentence="今天天气很好"), ensure_ascii=False) + "\n"
    m = tmp_path / "gbk.json"
    m.write_bytes(text.encode("gbk"))
    with pytest.raises(ManifestError, match=r"gbk\.json:1: not UTF-8 text .*save the manifest as UTF-8"):
        load_manifest(m)
    # UTF-16 (Notepad's "Unicode"): one message for the file, not "4 invalid lines" of a 3-line file
    m = tmp_path / "utf16.json"
    m.write_bytes((text * 3).encode("utf-16"))
    with pytest.raises(ManifestError, match=r"^\S*utf16\.json: saved as UTF-16; save the manifest as UTF-8$"):
        load_manifest(m)
    m.write_bytes(b'{"audio": {"path": "a\x01.wav"}}\n')  # a control character: the message read "…at at column"
    with pytest.raises(ManifestError, match=r"Invalid control character at, column \d+"):
        load_manifest(m)


def test_a_json_array_or_a_cut_line_is_said_as_such(tmp_path, audio_dir):
    """A manifest saved with json.dump (an array, pretty-printed: the files end in .json) gave one error per line
    (112 for 12 clips); a line cut short was "column 1" (the parser counted into the line after it)."""
    import subprocess
    import sys

    records = [_rec(), _rec("audio/b.wav")]
    for name, text in (("array.json", json.dumps(records, indent=2)), ("flat.json", json.dumps(records))):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(ManifestError, match=r"holds a JSON array; a manifest is jsonlines: one JSON object per "
                                                r"line\. Convert it: python -c") as e:
            load_manifest(tmp_path / name)
        assert "\n" not in str(e.value)
        command = str(e.value).split("Convert it: ", 1)[1].replace("> fixed.jsonl", "").strip()
        fixed = subprocess.run(command.replace("python", sys.executable, 1), shell=True, check=True,
                               capture_output=True, text=True, cwd=tmp_path).stdout
        assert [json.loads(x) for x in fixed.splitlines()] == records  # the command it gives converts the file
    (tmp_path / "objects.json").write_text("\n".join(json.dumps(r, indent=2) for r in records), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"holds pretty-printed JSON objects \(one spread over several lines\); "
                                            r"a manifest is jsonlines: write each object on one line"):
        load_manifest(tmp_path / "objects.json")
    line = json.dumps(_rec())
    m = _write(tmp_path / "cut.json", [_rec(), line[:-5]])
    with pytest.raises(ManifestError, match=rf"cut\.json:2: not valid JSON \(Expecting value, column "
                                            rf"{len(line) - 4}: the line ends early\)"):
        load_manifest(m)
    m = _write(tmp_path / "cut.json", [_rec(), line[:line.index("a.wav") + 2]])  # cut inside a string
    with pytest.raises(ManifestError, match=r"cut\.json:2: not valid JSON \(Unterminated string .*: the line ends "
                                            r"early\)"):
        load_manifest(m)
    m = tmp_path / "bom.json"  # Notepad's UTF-8: a BOM, here before a blank first line
    m.write_bytes(b"\xef\xbb\xbf\n" + (line + "\n").encode("utf-8"))
    assert len(load_manifest(m)) == 1


def test_files_named_wav_that_libsndfile_cannot_read_are_probed_up_to_a_budget(tmp_path, audio_dir, caplog):
    """A .wav libsndfile cannot read is handed to ffprobe (not audio: an error before training), but only the first
    MAX_PROBES: a dataset of AAC audio named .wav took ~0.1 s a file (hours for 100k clips) before training."""
    from utils.data import MAX_PROBES, check_clips

    for k in range(MAX_PROBES + 5):
        (audio_dir / f"x{k}.wav").write_bytes(b"not audio at all")
    m = _write(tmp_path / "t.json", [_rec(f"audio/x{k}.wav") for k in range(MAX_PROBES + 5)] + [_rec()])
    man = load_manifest(m)
    with caplog.at_level("INFO"):
        report = check_clips([man.record(i) for i in range(len(man))], [man.location(i) for i in range(len(man))])
    assert len(report.problems) == MAX_PROBES and all("not readable as audio" in p for p in report.problems)
    assert "5 more files whose header libsndfile cannot read" in caplog.text


def test_a_files_header_is_read_once_for_all_the_lines_that_slice_it(tmp_path, audio_dir, monkeypatch):
    """finetune.py read the header of the file of every line (about 1 ms each: 100 000 slices of a few recordings
    took minutes before training); each file is read once, and every slice is still checked against its length."""
    import utils.audio
    from utils.data import check_clips

    read = []
    header = utils.audio._header_duration
    monkeypatch.setattr(utils.audio, "_header_duration", lambda path: read.append(path) or header(path))
    lines = [_rec(audio={"path": "audio/a.wav", "start_time": k / 10, "end_time": k / 10 + 0.1}, duration=0.1)
             for k in range(8)] + [_rec(audio={"path": "audio/a.wav", "start_time": 5.0}, duration=0.1)]
    man = load_manifest(_write(tmp_path / "t.json", lines))
    report = check_clips([man.record(i) for i in range(len(man))], [man.location(i) for i in range(len(man))])
    assert len(read) == 1
    assert len(report.problems) == 1 and "t.json:9" in report.problems[0] and "start_time' 5.0" in report.problems[0]


def test_skip_invalid_is_explicit_and_counted(tmp_path, audio_dir, caplog):
    m = _write(tmp_path / "t.json", [_rec(), "{bad", _rec("audio/b.wav")])
    man = load_manifest(m, skip_invalid=True)
    assert len(man) == 2
    assert man.location(1).endswith("t.json:3")
    assert "skipped 1 invalid lines" in caplog.text


def test_duration_bounds_filter(tmp_path, audio_dir, caplog):
    save_wav(audio_dir / "short.wav", np.zeros(4800, np.float32))
    save_wav(audio_dir / "long.wav", np.zeros(40 * 16000, np.float32))
    m = _write(tmp_path / "t.json", [_rec("audio/short.wav", duration=0.3), _rec(duration=1.0),
                                     _rec("audio/long.wav", duration=40.0)])
    import logging
    caplog.set_level(logging.INFO)
    man = load_manifest(m, min_duration=0.5, max_duration=30)
    assert len(man) == 1 and man[0].duration == 1.0
    # the lines are named (a wrong 'duration' drops a clip, and the user can find it)
    assert "left out 1 clips shorter than 0.50 s and 1 longer than 30.00 s (lines 1, 3: check their 'duration' " \
           "against the audio); cut the longer ones" in caplog.text
    # clips longer than the window are data lost: a warning (it was an INFO line), not for short ones alone
    assert [r.levelname for r in caplog.records if "left out" in r.getMessage()] == ["WARNING"]
    caplog.clear()
    load_manifest(_write(tmp_path / "s.json", [_rec("audio/short.wav", duration=0.3), _rec(duration=1.0)]),
                  min_duration=0.5)
    assert [r.levelname for r in caplog.records if "left out" in r.getMessage()] == ["INFO"]


def test_a_clip_a_wrong_duration_would_leave_out_is_read_at_its_audios_length(tmp_path, audio_dir, caplog):
    """A good 1 s clip whose 'duration' said 0.3 s (or 40 s) was left out among the short (long) ones, later with a
    warning that named its real length: a test clip of 2.99 s whose 'duration' said 45 was not scored. The audio's
    header is read for the lines the bounds leave out; a clip whose real length is inside them is kept at it, with a
    warning; one whose 'duration' is right stays out."""
    save_wav(audio_dir / "short.wav", np.zeros(3200, np.float32))  # 0.2 s: its 'duration' is right
    m = _write(tmp_path / "t.json", [_rec(duration=0.3), _rec("audio/b.wav"), _rec("audio/c.wav", duration=40.0),
                                     _rec("audio/short.wav", duration=0.2, sentence="真的短")])
    with caplog.at_level("WARNING"):
        man = load_manifest(m, min_duration=0.5, max_duration=20)
    assert [man.location(i).rsplit(":", 1)[1] for i in range(len(man))] == ["1", "2", "3"]
    assert [man[i].duration for i in range(3)] == [1.0, 1.0, 1.0] and list(man.durations) == [1.0, 1.0, 1.0]
    warned = [r.getMessage() for r in caplog.records if "not their audio's length" in r.getMessage()]
    assert len(warned) == 1 and "read with the audio's length" in warned[0]
    assert "t.json:1: " in warned[0] and "'duration' says 0.30 s, the audio is 1.00 s; fix 'duration'" in warned[0]
    assert "t.json:3: " in warned[0] and "'duration' says 40.00 s, the audio is 1.00 s" in warned[0]
    assert "t.json:4" not in warned[0]
    caplog.clear()
    with caplog.at_level("INFO"):
        load_manifest(m, min_duration=0.5, max_duration=20)
    assert "left out 1 clips shorter than 0.50 s and 0 longer than 20.00 s (line 4:" in caplog.text  # not 1 and 3
    # the advice for long clips follows the bound asked for, not Whisper's 30 s window
    save_wav(audio_dir / "long.wav", np.zeros(25 * 16000, np.float32))
    load_manifest(_write(tmp_path / "l.json", [_rec("audio/long.wav", duration=25.0), _rec()]), max_duration=20)
    assert "cut the longer ones into clips of at most 20 s (audio.start_time/end_time) or raise the bound " \
           "(--max_audio_len, up to 30 s" in caplog.text


def test_invisible_characters_and_odd_spaces_are_not_taught(tmp_path, audio_dir, caplog):
    """Text written in Notepad or Excel: a BOM, a zero-width space, a full-width space (U+3000), a no-break space and
    spaces at the ends were taught as they stood (the labels held "\ufeff请把门关上。"), while scoring dropped them. They
    are read as clean text (said once, naming the lines); the zero-width non-joiner that spells Persian stays."""
    lines = [_rec(sentence="\ufeff请把门关上。"), _rec("audio/b.wav", sentence="我们\u3000去公园。"),
             _rec("audio/c.wav", sentence="  他喜欢喝绿茶。 \u00a0", sentences=[
                 {"start": 0, "end": 0.5, "text": "他喜欢\u200b"}, {"start": 0.5, "end": 1.0, "text": "喝绿茶。"}]),
             _rec(sentence="می\u200cخواهم", language="Persian"), _rec(sentence="today is fine")]
    with caplog.at_level("INFO"):
        man = load_manifest(_write(tmp_path / "t.json", lines))
    assert [man[i].sentence for i in range(5)] == ["请把门关上。", "我们 去公园。", "他喜欢喝绿茶。", "می\u200cخواهم",
                                                   "today is fine"]
    assert [seg.text for seg in man[2].sentences] == ["他喜欢", "喝绿茶。"]
    said = [r.getMessage() for r in caplog.records if "invisible characters" in r.getMessage()]
    assert len(said) == 1 and "3 line(s)" in said[0] and "lines 1, 2, 3" in said[0]
    # a timed segment keeps the space it begins with (Whisper's " world" is another token than "world"), and one
    # that holds nothing but invisible characters is a segment of no text, warned about as one
    timed = _rec(sentence="Hello there, world.", language="English", sentences=[
        {"start": 0, "end": 0.4, "text": " Hello there,"}, {"start": 0.4, "end": 0.5, "text": "\u200b"},
        {"start": 0.5, "end": 0.9, "text": "  world.\u3000"}, {"start": 0.9, "end": 1.0, "text": "  "}])
    caplog.clear()
    with caplog.at_level("WARNING"):
        segments = load_manifest(_write(tmp_path / "s.json", [timed]), timestamps=True)[0].sentences
    assert [seg.text for seg in segments] == [" Hello there,", "", " world.", ""]
    assert "1 line(s) with a timed segment of no text" in caplog.text


def test_windows_files_and_pandas_exports_are_read_or_named(tmp_path, audio_dir):
    """What a Windows user's manifest holds: a line of U+3000 alone or the Ctrl-Z that ends a DOS file (they were
    "not valid JSON"), drive paths (said as such, not "write the path with /"), a path with a space at its end (shown
    quoted), and pandas' DataFrame.to_json() default (one object of columns: "'audio.path' missing")."""
    m = tmp_path / "t.json"
    m.write_text(json.dumps(_rec()) + "\n\u3000\n" + json.dumps(_rec("audio/b.wav")) + "\x1a\n\x1a", encoding="utf-8")
    assert len(load_manifest(m)) == 2
    for path in ("C:\\data\\a.wav", "D:/data/a.wav"):
        with pytest.raises(ManifestError, match=f"{path[:2]}.*is a Windows path \\(drive {path[:2]}\\); rewrite"):
            load_manifest(_write(tmp_path / "w.json", [_rec(path)]))
    with pytest.raises(ManifestError, match="'audio.path' 'audio/a.wav ' not found"):
        load_manifest(_write(tmp_path / "s.json", [_rec("audio/a.wav ")]))
    columns = {"audio": {"0": {"path": "audio/a.wav"}, "1": {"path": "audio/b.wav"}}, "sentence": {"0": "a", "1": "b"},
               "duration": {"0": 1.0, "1": 1.0}}
    with pytest.raises(ManifestError, match="pandas.*orient=\"records\", lines=True"):
        load_manifest(_write(tmp_path / "p.json", [columns]))


def test_relative_paths_that_could_name_other_files_are_warned_about(tmp_path, audio_dir, monkeypatch, caplog):
    """Relative paths are looked for in the manifest's folder, then in the working directory: a user's paths written
    from the working directory read one clip from the manifest's folder, where a file of that name was, and scored CER
    0.57 without a word. Both cases are said; the same clip named "./audio/a.wav" and "audio/a.wav" is one clip."""
    from utils.data import check_clips

    lists = tmp_path / "lists"
    save_wav(lists / "audio" / "a.wav", np.zeros(8000, np.float32))
    m = _write(lists / "t.json", [_rec("audio/a.wav"), _rec("audio/b.wav")])
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        man = load_manifest(m)
    assert man[0].audio_path == str(lists / "audio" / "a.wav") and man[1].audio_path == str(tmp_path / "audio/b.wav")
    assert "1 relative 'audio.path'(s) name a file both in the manifest's folder and in the current directory (line " \
           "1)" in caplog.text
    assert "1 were found in the manifest's folder (line 1) and 1 only in the current directory (line 2)" in caplog.text
    same = load_manifest(_write(tmp_path / "d.json", [_rec("audio/a.wav"), _rec("./audio/a.wav")]))
    report = check_clips([same[0], same[1]], ["d.json:1", "d.json:2"])
    assert len(report.repeated) == 1 and "d.json:2: the same clip as d.json:1" in report.repeated[0]


def test_an_m4a_clips_length_is_checked_before_training(tmp_path, audio_dir):
    """libsndfile reads no m4a header: a 3 s m4a clip whose 'duration' said 1 s went unchecked until training drew it
    (a 36 s one stopped fine-tuning there); ffprobe reads its length (and a slice past its end) up front."""
    import subprocess

    from utils.data import check_clips

    wav = audio_dir / "three.wav"
    save_wav(wav, (0.1 * np.sin(np.arange(48000) / 10)).astype(np.float32))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(audio_dir / "three.m4a")],
                   check=True)
    man = load_manifest(_write(tmp_path / "t.json", [
        _rec("audio/three.m4a", duration=1.0), _rec(audio={"path": "audio/three.m4a", "end_time": 8.0}, duration=8.0)]))
    report = check_clips([man[0], man[1]], [man.location(0), man.location(1)], max_seconds=30)
    assert len(report.mismatched) == 1 and "'duration' says 1.00 s, the audio is 3.0" in report.mismatched[0]
    assert len(report.problems) == 1 and "'audio.end_time' 8.0 s is past the end of the audio" in report.problems[0]
    # a webm a browser recorded as a stream says no length ("N/A"): not refused as unreadable, read whole
    from utils.audio import audio_duration

    webm = audio_dir / "stream.webm"
    with open(webm, "wb") as f:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus", "-f", "webm", "pipe:1"],
                       check=True, stdout=f)
    man = load_manifest(_write(tmp_path / "w.json", [_rec("audio/stream.webm", duration=3.0)]))
    assert check_clips([man[0]], [man.location(0)], max_seconds=30).problems == []
    assert audio_duration(webm) == pytest.approx(3.0, abs=0.05)
    # ... while a picture says "N/A" too, and holds no audio
    picture = audio_dir / "cover.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=16x16", "-frames:v", "1",
                    "-f", "image2", "-c:v", "png", str(picture)], check=True)
    man = load_manifest(_write(tmp_path / "p.json", [_rec("audio/cover.wav", duration=3.0)]))
    problems = check_clips([man[0]], [man.location(0)], max_seconds=30).problems
    assert len(problems) == 1 and "not readable as audio (no audio stream)" in problems[0]


def test_label_too_long_rejected(tmp_path, audio_dir):
    m = _write(tmp_path / "t.json", [_rec(), _rec(sentence="字" * 500)])
    with pytest.raises(ManifestError, match=r"t\.json:2: 'sentence' is 504 tokens .* more than Whisper's 448"):
        load_manifest(m, encode=lambda s: list(range(len(s))))


def test_sentences_that_say_something_else_than_the_sentence_are_warned_about(tmp_path, audio_dir, caplog):
    """With --timestamps=True the label is the 'sentences' texts, while the eval scores 'sentence': a line whose
    segments said "完全不同的文字。" for "天气冷了，我们吃火锅吧。" trained on that without a word; now warned (naming the
    lines). Punctuation, case and spaces between segments are no difference."""
    m = _write(tmp_path / "t.json", [
        _rec(sentence="天气冷了，我们吃火锅吧。", sentences=[{"start": 0, "end": 0.4, "text": "完全不同"},
                                                      {"start": 0.5, "end": 0.9, "text": "的文字。"}]),
        _rec(sentence="Hello there, world.", sentences=[{"start": 0, "end": 0.4, "text": " hello there"},
                                                        {"start": 0.5, "end": 0.9, "text": " World"}]),
        _rec(sentence="天气冷了，我们吃火锅吧。", sentences=[{"start": 0, "end": 0.4, "text": ""},
                                                      {"start": 0.5, "end": 0.9, "text": "我们吃火锅吧。"}]),
    ])
    with caplog.at_level("WARNING"):
        load_manifest(m, timestamps=True)
    assert "2 line(s) whose 'sentences' texts do not make their 'sentence' (lines 1, 3)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_manifest(m)  # without timestamps the label is 'sentence'
    assert "sentences" not in caplog.text


def test_a_timed_segment_of_no_text_is_warned_about(tmp_path, audio_dir, caplog):
    """Segments [0-2.68 s: "", 3.28-5.9 s: both sentences]: the texts make 'sentence', so nothing was said, and the
    model learned silence where the first sentence is said. A no-speech line's empty segment is fine."""
    m = _write(tmp_path / "t.json", [
        _rec(sentence="天气冷了", sentences=[{"start": 0, "end": 0.3, "text": " "},
                                         {"start": 0.4, "end": 0.9, "text": "天气冷了"}]),
        _rec(sentence="", sentences=[{"start": 0, "end": 0.9, "text": ""}]),
        _rec(sentence="没有分段"),  # a line without 'sentences' (KeyError: the demo corpus stopped loading)
    ])
    with caplog.at_level("WARNING"):
        load_manifest(m, timestamps=True)
    assert "1 line(s) with a timed segment of no text while 'sentence' has words (line 1)" in caplog.text
    assert "do not make their 'sentence'" not in caplog.text


def test_empty_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "none.json")
    (tmp_path / "e.json").write_text("\n\n")
    with pytest.raises(ManifestError, match="manifest is empty"):
        load_manifest(tmp_path / "e.json")


def test_compact_storage_and_pickle(tmp_path, audio_dir):
    import pickle
    m = _write(tmp_path / "t.json", [_rec()] * 100)
    man = load_manifest(m)
    assert man.offsets.dtype == np.int64 and man.durations.dtype == np.float32
    man[0]
    clone = pickle.loads(pickle.dumps(man))  # DataLoader workers get a copy without the open file
    assert clone[99].sentence == "你好"


def test_relative_audio_path(tmp_path):
    assert relative_audio_path(tmp_path / "audio/x.wav", tmp_path / "train.json") == "audio/x.wav"
    assert relative_audio_path("/elsewhere/x.wav", tmp_path / "train.json") == "/elsewhere/x.wav"


def test_translations_naming_a_chinese_place_or_brand_are_english():
    """--task=translate refused English translations that name 阿里云 or 微信 ("2 of 3 sentences are written in
    Chinese"): a sentence counts as Chinese when it is mostly Chinese characters."""
    from utils.data import check_translation_references

    check_translation_references(["We deploy on 阿里云 (Alibaba Cloud).", "Use 微信 Pay.", "The API is slow."], "x")
    with pytest.raises(ManifestError, match="x: 2 of 3 sentences"):  # code-switching transcripts: Chinese grammar
        check_translation_references(["打开 GitHub 的 pull request", "用 Excel 和 PowerPoint 做 report", "OK."], "x")
    with pytest.raises(ManifestError, match="x: 2 of 3 sentences are written in Chinese/Japanese"):
        check_translation_references(["这个 API 的 latency 太高了", "今天天气很好。", "The API is slow."], "x")


def test_a_segment_ending_a_little_past_the_clip_is_read_as_ending_with_it(tmp_path, audio_dir, caplog):
    """The original toolkit's README example has a segment ending at 8.4 s in a 7.37 s clip: its manifests were
    refused line by line. Up to 1.5 s past the end is read as the clip's end, with one warning naming the lines."""
    line = _rec(sentences=[{"start": 0, "end": 0.5, "text": "x"}, {"start": 0.5, "end": 2.2, "text": "y"}])
    m = load_manifest(_write(tmp_path / "t.json", [_rec(), line, line]))
    assert m[1].sentences[-1].end == m[1].duration == 1.0
    assert "2 line(s) with a segment of 'sentences' ending after the clip's 'duration' (lines 2, 3): read as " \
        "ending at the clip's end" in caplog.text
