import json
import os
import stat

import pytest

from utils.io import atomic_open, write_json_atomic, write_jsonlines_atomic


def test_jsonlines_roundtrip(tmp_path):
    p = tmp_path / "sub" / "m.json"
    assert write_jsonlines_atomic(p, [{"sentence": "你好"}, {"sentence": ""}]) == 2
    lines = p.read_text(encoding="utf-8").splitlines()
    assert [json.loads(l)["sentence"] for l in lines] == ["你好", ""]
    assert "你好" in lines[0]  # not \u escapes


def test_crash_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "r.json"
    write_json_atomic(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_publishes_only_a_complete_folder(tmp_path):
    from utils.io import atomic_dir

    target = tmp_path / "a" / "b" / "model"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(target) as staging:
            (staging / "weights.bin").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not (tmp_path / "a").exists()  # neither the staging folder nor the parents made for it

    with atomic_dir(target) as staging:
        (staging / "weights.bin").write_bytes(b"v1")
    assert (target / "weights.bin").read_bytes() == b"v1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_atomic_dir_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    from utils.io import atomic_dir

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        with atomic_dir(target):
            raise AssertionError("the block must not run when the target exists and overwrite is False")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as staging:
            (staging / "weights.bin").write_bytes(b"new, half")
            raise RuntimeError("killed")
    assert (target / "weights.bin").read_bytes() == b"old"
    with atomic_dir(target, overwrite=True) as staging:
        (staging / "weights.bin").write_bytes(b"new")
    assert (target / "weights.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_recover_displaced_puts_back_a_folder_a_crash_left_aside(tmp_path):
    from utils.io import recover_displaced

    (tmp_path / ".old-checkpoint-best.1a2b").mkdir()  # a crash between the two renames of publish_dir
    (tmp_path / ".old-checkpoint-best.1a2b" / "adapter.bin").write_bytes(b"best")
    (tmp_path / ".tmp-checkpoint-9.77").mkdir()  # a half-written new version
    recover_displaced(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-best"]
    assert (tmp_path / "checkpoint-best" / "adapter.bin").read_bytes() == b"best"


def test_checkpoint_rotation_keeps_this_runs_newest_and_an_earlier_runs_later_ones(tmp_path):
    """A fresh run in a folder with an earlier run's checkpoint-1000: rotation deletes only this run's older
    checkpoints (by step number alone, checkpoint-1000 would have pushed out every one of them)."""
    from utils.trainer import STATE_FILE, _rotate_checkpoints, list_checkpoints

    for step in (1, 2, 3, 1000):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / STATE_FILE).write_text("{}")
    _rotate_checkpoints(tmp_path, 2, step=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3, 1000]
    _rotate_checkpoints(tmp_path, 1, step=1000)  # the same folder resumed at the earlier run's step
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1000]
    _rotate_checkpoints(tmp_path, 0, step=1000)  # 0 = keep all
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1000]


def test_files_written_together_are_all_replaced_or_none(tmp_path):
    """A transcript's .txt/.srt/.vtt/.json (and aishell.py's three manifests) belong together: Ctrl-C while the third
    is written left the first two new beside old others. Now every file is staged first, then all are renamed."""
    from utils.io import write_together

    old = {tmp_path / f"t.{ext}": f"old {ext}" for ext in ("txt", "srt", "vtt")}
    for path, text in old.items():
        path.write_text(text)

    def interrupted(f):
        raise KeyboardInterrupt

    writers = {path: (lambda f, ext=path.suffix: f.write(f"new {ext}")) for path in old}
    with pytest.raises(KeyboardInterrupt):
        write_together({**writers, tmp_path / "t.json": interrupted})
    assert {p.name for p in tmp_path.iterdir()} == {"t.txt", "t.srt", "t.vtt"}  # no temporary file left
    assert all(path.read_text() == text for path, text in old.items())
    write_together(writers)
    assert all(path.read_text() == f"new {path.suffix}" for path in old)


def test_a_transcript_is_written_in_every_format_or_none(tmp_path, monkeypatch):
    """infer.py --output_format=all: Ctrl-C (or a failing writer) after .txt and .srt were written left them without
    their .vtt and .json."""
    import utils.subtitles
    from utils.data import Segment
    from utils.transcribe import Transcript

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    transcript = Transcript("a b", "en", 1.0, 2.0, [Segment(0.0, 1.0, "a b")])
    monkeypatch.setattr(utils.subtitles, "to_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        utils.subtitles.write_transcript(transcript, tmp_path, "t", ["txt", "srt", "vtt", "json"])
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    written = utils.subtitles.write_transcript(transcript, tmp_path, "t", ["txt", "srt", "vtt", "json"])
    assert sorted(p.name for p in written) == sorted(p.name for p in tmp_path.iterdir()) == [
        "t.json", "t.srt", "t.txt", "t.vtt"]


def test_a_link_or_a_pipe_is_written_through_not_replaced(tmp_path):
    """atomic_open replaced whatever the path was: a link became a file beside its unchanged target, a FIFO a regular
    file (and, run as root, --output=/dev/null replaced the device)."""
    import threading

    from utils.io import write_text_atomic

    target = tmp_path / "target.txt"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text(encoding="utf-8") == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_replaced_file_keeps_its_permissions_and_manifests_go_through_links_too(tmp_path):
    """A private (0600) file reached through a link was replaced by a 0644 one; write_together replaced a linked
    train.json by a file of its own (its target kept the old text); /dev/stdout of a shell's ``>> log`` resolves to
    the log file, which was replaced (what it held was lost)."""
    from utils.io import _replaced, write_jsonlines_together, write_text_atomic

    private = tmp_path / "private.txt"
    private.write_text("old", encoding="utf-8")
    private.chmod(0o600)
    link = tmp_path / "link.txt"
    link.symlink_to(private)
    write_text_atomic(link, "new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text(encoding="utf-8") == "new"
    target = tmp_path / "data" / "train.json"
    target.parent.mkdir()
    target.write_text("{}\n", encoding="utf-8")
    (tmp_path / "train.json").symlink_to(target)
    write_jsonlines_together({tmp_path / "train.json": [{"sentence": "好"}]})
    assert (tmp_path / "train.json").is_symlink() and json.loads(target.read_text(encoding="utf-8")) == {"sentence": "好"}
    assert _replaced("/dev/null") is None and _replaced(tmp_path / "new.txt") == tmp_path / "new.txt"


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1", "/proc/thread-self/fd/1", "link", "dotdot"])
def test_writing_to_our_own_stdout_appends_where_the_shell_sent_it(tmp_path, name):
    """``--output=/dev/stdout >> log``: /dev/stdout resolves to the log file, which was replaced (and opening it
    again truncates it): the log lost what it held. Now the write goes to the descriptor the shell opened."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    log = tmp_path / "log.txt"
    log.write_text("earlier run\n", encoding="utf-8")
    target = name
    if name == "link":  # a link to /dev/stdout outside /dev
        (tmp_path / "out.txt").symlink_to("/dev/stdout")
        target = str(tmp_path / "out.txt")
    elif name == "dotdot":  # ".." after a link to a folder of /dev is /dev: not the path's text collapsed
        (tmp_path / "shm").symlink_to("/dev/shm")
        target = str(tmp_path / "shm" / ".." / "stdout")
    with open(log, "a", encoding="utf-8") as out:
        subprocess.run([sys.executable, "-c", f"from utils.io import write_text_atomic; "
                        f"write_text_atomic({target!r}, 'report\\n')"], stdout=out, cwd=REPO_ROOT, check=True)
    assert log.read_text(encoding="utf-8") == "earlier run\nreport\n"
    atomic_scratch = tmp_path / "shm-like" / "m.json"  # a plain path is still written atomically, folders made
    write_json_atomic(atomic_scratch, {"v": 1})
    with pytest.raises(KeyboardInterrupt), atomic_open(atomic_scratch) as f:
        f.write('{"partial')
        raise KeyboardInterrupt
    assert json.loads(atomic_scratch.read_text(encoding="utf-8")) == {"v": 1}


def test_manifests_written_together_go_into_a_pipe_or_our_stdout_directly(tmp_path):
    """write_together (aishell.py's manifests, infer.py's formats) replaced a FIFO by a regular file and /dev/stdout of
    a shell's ``>> log`` by a new file (the log lost what it held), as atomic_open did before."""
    import subprocess
    import sys
    import threading

    from tests.conftest import REPO_ROOT
    from utils.io import write_jsonlines_together

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    write_jsonlines_together({fifo: [{"sentence": "管道"}], tmp_path / "test.json": [{"sentence": "好"}]})
    reader.join(timeout=10)
    assert got == ['{"sentence": "管道"}\n'] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert (tmp_path / "test.json").read_text(encoding="utf-8") == '{"sentence": "好"}\n'
    log = tmp_path / "log.txt"
    log.write_text("earlier run\n", encoding="utf-8")
    with open(log, "a", encoding="utf-8") as out:
        subprocess.run([sys.executable, "-c", "from utils.io import write_jsonlines_together; "
                        "write_jsonlines_together({'/dev/stdout': [{'a': 1}]})"], stdout=out, cwd=REPO_ROOT, check=True)
    assert log.read_text(encoding="utf-8") == 'earlier run\n{"a": 1}\n'
