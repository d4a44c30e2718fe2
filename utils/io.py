"""Atomic writing: a crash never leaves a half-written file (manifest, report) or folder (model, checkpoint)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-"  # <parent>/.tmp-<name>.<id>: a folder being written
DISPLACED_PREFIX = ".old-"  # <parent>/.old-<name>.<id>: the previous version, while the new one moves in


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FD_PATH = re.compile(r"/(?:dev|proc/(?:self|thread-self|(?P<pid>\d+))(?:/task/\d+)?)/fd/(?P<fd>\d+)"
                      r"|/dev/std(?P<std>in|out|err)")


def _descriptor(path: str | os.PathLike) -> int | None:
    """The file descriptor of this process that ``path`` names, directly or through links (/dev/stdout, /dev/fd/1,
    /proc/self/fd/1, a link to one of them): /dev/stdout of a shell's ``>> log`` resolves to the log file, and
    replacing it, or opening it again (which truncates it), lost what the log held."""
    current = os.path.join(os.getcwd(), os.fspath(path))  # not normalised: ".." after a link is the link's parent's
    for _ in range(40):  # links followed one at a time (a loop of links ends here)
        match = _FD_PATH.fullmatch(current)
        if match:
            if match["pid"] is not None and int(match["pid"]) != os.getpid():
                return None  # another process's descriptor: not ours to write
            return int(match["fd"]) if match["fd"] is not None else ("in", "out", "err").index(match["std"])
        parent, name = os.path.split(current)
        real_parent = os.path.realpath(parent)  # links in its folders resolved (/tmp/d -> /dev: /tmp/d/stdout)
        current = os.path.join(real_parent, name)
        if _FD_PATH.fullmatch(current):
            continue
        if not os.path.islink(current):
            return None
        current = os.path.join(real_parent, os.readlink(current))
    return None


def _replaced(path: str | os.PathLike) -> Path | None:
    """The file an atomic write to ``path`` replaces: ``path``, or a link's target (the link kept); None where it must
    be written directly: a path that exists and is no regular file (a FIFO, a device: as root, /dev/null was replaced
    by a regular file)."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        return None
    return Path(os.path.realpath(path))


def _opened_directly(path: str | os.PathLike, fd: int | None, mode: str, encoding: str | None) -> IO[Any]:
    """``path`` opened to be written where it points: through a copy of this process's descriptor ``fd`` (appended as
    the shell asked), or by its name (a FIFO, a device)."""
    encoding = None if "b" in mode else encoding
    if fd is None:
        return open(path, mode, encoding=encoding)
    try:
        return os.fdopen(os.dup(fd), mode, encoding=encoding)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (descriptor {fd} is not open)", os.fspath(path)) from None


def _keep_mode(tmp: str, target: Path) -> None:
    """Give the temporary file that replaces ``target`` its permissions (a private 0600 file stays private)."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))


@contextlib.contextmanager
def _temporary_file(path: Path, mode: str, encoding: str | None) -> Iterator[tuple[IO[Any], str]]:
    """A temporary file next to ``path`` (same file system) and its name; written out (fsync) with normal
    permissions when the block ends, removed if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched. A link is followed (its target is
    replaced, the link kept); this process's own descriptors (/dev/stdout: :func:`_descriptor`) and other paths that
    are no regular file (a FIFO, /dev/null) are written directly: replacing them put a regular file where the pipe or
    the device was (as root: /dev/null), or lost what a shell's ``>> log`` held.
    """
    fd = _descriptor(path)
    target = None if fd is not None else _replaced(path)
    if target is None:
        with _opened_directly(path, fd, mode, encoding) as f:
            yield f
        return
    with _temporary_file(target, mode, encoding) as (f, tmp):
        yield f
    try:
        _keep_mode(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_open(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write a JSON document atomically, keeping non-ASCII text readable."""
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def _write_jsonlines(f: IO[str], records: Iterable[dict[str, Any]]) -> int:
    """One JSON object per line (non-ASCII text kept readable); returns the number of lines written."""
    n = 0
    for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False))
        f.write("\n")
        n += 1
    return n


def write_jsonlines_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line atomically; returns the number of lines written."""
    with atomic_open(path) as f:
        return _write_jsonlines(f, records)


def write_jsonlines_together(files: Mapping[str | os.PathLike, Iterable[dict[str, Any]]]) -> None:
    """Write several JSON-lines files (one JSON object per line) so that all of them are replaced or none
    (:func:`write_together`: train/dev/test manifests that belong together: a failure after the first two were
    replaced left a new train.json beside an old test.json)."""
    write_together({path: (lambda f, records=records: _write_jsonlines(f, records)) for path, records in files.items()})


def write_together(files: Mapping[str | os.PathLike, Callable[[IO[str]], Any]]) -> None:
    """Write several UTF-8 text files, each by its writer (called with the open file), so that all of them are
    replaced or none: each is written to a temporary file first (a full disk, a folder in the way or Ctrl-C leaves
    every old file as it was), then all are renamed. A path that must be written directly (as :func:`atomic_open`:
    this process's descriptor, a FIFO, a device) is written after the temporary files, before the renames."""
    targets: list[tuple[str | os.PathLike, int | None, Path | None]] = []
    for name in files:
        fd = _descriptor(name)
        target = None if fd is not None else _replaced(name)  # a link's target is replaced, the link kept
        if target is not None and target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way of this file; move it away", str(target))
        targets.append((name, fd, target))
    temps: list[tuple[str, Path]] = []
    renamed = 0
    try:
        for (_, _, target), write in zip(targets, files.values()):
            if target is not None:
                with _temporary_file(target, "w", "utf-8") as (f, tmp):
                    write(f)
                temps.append((tmp, target))
        for (name, fd, target), write in zip(targets, files.values()):
            if target is None:
                with _opened_directly(name, fd, "w", "utf-8") as f:
                    write(f)
        for tmp, target in temps:
            _keep_mode(tmp, target)
            os.replace(tmp, target)
            renamed += 1
    finally:
        for tmp, _ in temps[renamed:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def staging_dir_for(target: str | os.PathLike) -> Path:
    """A new, empty, hidden folder next to ``target`` (same file system, so it can be renamed onto it)."""
    target = Path(target)
    staging = target.parent / f"{STAGING_PREFIX}{target.name}.{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def _normalize_modes(folder: Path) -> None:
    """Give every file the umask's permissions (some writers, like mkstemp, create 0600 files)."""
    file_mode = 0o666 & ~_umask()
    for file in folder.rglob("*"):
        if file.is_file() and not file.is_symlink():
            file.chmod(file_mode)


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike, *, overwrite: bool) -> None:
    """Rename the complete folder ``staging`` onto ``target``; at every instant one complete version exists.

    An existing ``target`` is first renamed to ``.old-<name>.<id>`` and deleted only once the new one is in
    place; a crash between the two renames leaves it there, and ``recover_displaced`` puts it back.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False (``staging`` is left as it is).
    """
    staging, target = Path(staging), Path(target)
    _normalize_modes(staging)
    if not target.exists():
        os.replace(staging, target)
        return
    if not overwrite:
        raise FileExistsError(f"{target}: already exists; pass --overwrite to replace it")
    old = target.parent / f"{DISPLACED_PREFIX}{target.name}.{uuid.uuid4().hex[:12]}"
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_displaced(parent: str | os.PathLike) -> None:
    """After a crash inside ``publish_dir``: put back displaced folders whose target is missing, and delete
    leftover staging folders and displaced folders whose new version is in place."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(DISPLACED_PREFIX) and p.is_dir():
            target = parent / p.name[len(DISPLACED_PREFIX):].rsplit(".", 1)[0]
            if not target.exists():
                os.replace(p, target)
                logger.warning("restored %s after an interrupted save", target)
            else:
                shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(STAGING_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, deepest first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a folder atomically: yields an empty staging folder next to ``target``; when the block succeeds it
    replaces ``target`` (``publish_dir``). When the block raises, the staging folder and any parent folders
    this call created are removed, so a failure leaves nothing behind.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False, checked before the block runs.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; pass --overwrite to replace it")
    created = _missing_parents(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir_for(target)
    try:
        yield staging
        publish_dir(staging, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise
