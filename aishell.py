"""Turn the AISHELL-1 corpus (openslr resource 33, data_aishell.tgz) into train/dev/test manifests.

    python aishell.py --filepath=/home/test/data_aishell.tgz

The archive holds ``data_aishell/transcript/aishell_transcript_v0.8.txt`` (``ID word word ...`` per line)
and one nested archive per speaker, ``data_aishell/wav/S0002.tar.gz``, holding
``{train,dev,test}/S0002/BAC009S0002W0122.wav`` (the recipes unpack it in ``data_aishell/wav``; one packed with
the ``wav/`` folder itself is read too). Audio is unpacked to ``<target_dir>/data_aishell/wav/<split>/<speaker>/``;
the archive itself is only ever read. No utterance matched at all (another layout): an error, and the manifests
already there are left as they are.

Re-running is cheap: a marker file per speaker (with the durations of its wavs) is written after the
speaker is completely unpacked, and one for the whole archive at the end, so finished work is skipped.
Manifests are written to a temporary file and renamed, so a crash never leaves half of one.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gzip
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tarfile
import uuid
import wave
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.audio import AudioLoadError, audio_duration
from utils.cli import check_output_path, make_parser, optional_path, path_arg, setup_logging
from utils.archive import UnsafeArchiveError, extract_member, member_path
from utils.data import relative_audio_path
from utils.download import DownloadError, download_file
from utils.io import atomic_open, write_json_atomic, write_jsonlines_together

logger = logging.getLogger(__name__)

DOWNLOAD_URLS = (
    "https://www.openslr.org/resources/33/data_aishell.tgz",
    "https://openslr.elda.org/resources/33/data_aishell.tgz",  # mirror
)
ARCHIVE_MD5 = "2f494334227864a8a8fec932999db9d8"
ARCHIVE_NAME = "data_aishell.tgz"
DATA_DIR_NAME = "data_aishell"
TRANSCRIPT_MEMBER = "data_aishell/transcript/aishell_transcript_v0.8.txt"
TRANSCRIPT_PATH = "transcript/aishell_transcript_v0.8.txt"  # relative to <target_dir>/data_aishell
SPLITS = ("train", "dev", "test")
LANGUAGE = "Chinese"
MARKER_DIR = ".aishell_unpacked"  # under <target_dir>/data_aishell: one <speaker>.json each + ARCHIVE_MARKER
ARCHIVE_MARKER = "_archive.json"
STAGING_DIR = ".aishell_staging"  # under <target_dir>/data_aishell: a speaker is unpacked here, then moved in

_SPEAKER_MEMBER_RE = re.compile(r"^data_aishell/wav/([^/]+)\.tar\.gz$")
# wav/<split>/<speaker>/<utterance>.wav under data_aishell (without wav/: unpacked by a version that put the real
# layout's speaker folders beside wav/, which its markers still list)
_WAV_MEMBER_RE = re.compile(r"^(?:wav/)?([^/]+)/([^/]+)/([^/]+)\.wav$")
_READ_BUFFER = 1 << 20  # bytes; tarfile's stream default (16 KiB) makes reading a 15 GB archive slow


class AishellError(RuntimeError):
    """Preparing AISHELL failed; the message names the file and what to do."""


class CorruptArchiveError(AishellError):
    """The archive (or a speaker archive inside it) is missing, truncated or not a tar archive."""


class MissingTranscriptError(AishellError):
    """The archive has no transcript file."""


@dataclass
class PrepareSummary:
    """What ``prepare_aishell`` wrote and skipped."""

    manifests: dict[str, Path] = field(default_factory=dict)
    utterances: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    wavs_without_transcript: int = 0
    transcripts_without_wav: int = 0
    speakers_unpacked: int = 0  # speakers unpacked by this run (0 when everything was already unpacked)


# --------------------------------------------------------------------------------------------------
# Download and unpack


def download_archive(
    dest: str | os.PathLike,
    urls: Sequence[str] = DOWNLOAD_URLS,
    md5: str | None = ARCHIVE_MD5,
    **kwargs: Any,
) -> Path:
    """Download data_aishell.tgz to ``dest`` (official URL, then the mirror), resumable and md5-checked:
    :func:`utils.download.download_file`, whose keyword arguments (retries, timeout, progress…) pass through.

    Raises:
        DownloadError: every URL failed, or the md5 does not match.
    """
    return download_file(dest, urls, md5, hint="pass it with --filepath", **kwargs)


_WAV_HEADER_BYTES = 44  # the smallest PCM wav header: a file of n bytes holds at most (n - 44) / block bytes of frames


def _wav_duration(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, shown: str) -> tuple[float, str]:
    """(seconds, note): the duration from the member's wav header, but no more than its bytes can hold (a header
    whose data size is 0xFFFFFFFF, as some recorders write, or a truncated file: ``note`` says so, naming the wav
    as ``shown``, else ""); libsndfile or ffprobe on the unpacked ``path`` if not PCM.

    Raises:
        AudioLoadError: not readable as audio (an empty or cut-off file).
    """
    try:
        with tar.extractfile(member) as f, wave.open(f) as w:
            frames, rate, block = w.getnframes(), w.getframerate(), w.getnchannels() * w.getsampwidth()
    except (wave.Error, EOFError):
        return audio_duration(path), ""
    if rate <= 0 or block <= 0:
        raise AudioLoadError(f"{path}: its header says {rate} Hz, {block} bytes a frame")
    held = max(0, member.size - _WAV_HEADER_BYTES) // block
    if frames <= held:
        return frames / rate, ""
    return held / rate, (f"{shown}: its header says {frames / rate:.2f} s, the file holds {held / rate:.2f} s "
                         f"(truncated, or a header written before the recording ended); the manifest gets "
                         f"{held / rate:.2f} s")


def _publish_tree(staging: Path, dest: Path) -> None:
    """Move every file and link under ``staging`` to the same relative path under ``dest``."""
    for root, dirs, files in os.walk(staging):
        rel = Path(root).relative_to(staging)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            (dest / rel).mkdir(parents=True, exist_ok=True)
            os.replace(os.path.join(root, name), dest / rel / name)


def _unpack_speaker(data: bytes, label: str, data_dir: str) -> tuple[dict[str, float], list[str]]:
    """Unpack one speaker archive (its gzip-compressed bytes) under ``data_dir/wav`` (its members are
    ``<split>/<speaker>/<utterance>.wav``; those of an archive packed with ``wav/`` in front go under ``data_dir``).

    The members go to a staging folder first and are moved in only when the whole speaker archive was read
    and accepted, so a corrupt speaker archive leaves none of its files behind. A wav that is not readable audio
    (empty, cut off in its header) is left out: one bad file in 141,600 should not cost the whole corpus.

    Returns:
        ({wav path relative to data_dir: duration in seconds from the wav header}, warnings to log: this runs in a
        worker process, whose log records go nowhere).
    """
    durations: dict[str, float] = {}
    notes: list[str] = []
    staging = Path(data_dir) / STAGING_DIR / uuid.uuid4().hex[:12]
    (staging / "wav").mkdir(parents=True)
    try:
        # decompressed in memory (~50 MB for an AISHELL speaker), so reading a header costs no re-decompression
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
            for member in tar:
                path = member_path(member, label)
                packed_with_wav = path == "wav" or path.startswith("wav/")
                dest = staging if packed_with_wav else staging / "wav"
                extract_member(tar, member, os.fspath(dest), label)
                if member.isfile() and path.endswith(".wav"):
                    rel = path if packed_with_wav else f"wav/{path}"
                    unpacked = os.path.join(dest, path)
                    try:
                        durations[rel], note = _wav_duration(tar, member, unpacked, os.path.join(data_dir, rel))
                    except AudioLoadError as e:
                        os.unlink(unpacked)
                        reason = str(e).removeprefix(f"{unpacked}: ").replace(unpacked, os.path.basename(path))
                        notes.append(f"{label}:{path}: left out, not readable as audio ({reason}; {member.size} "
                                     "bytes)")
                        continue
                    if note:
                        notes.append(note)
        _publish_tree(staging, Path(data_dir))
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptArchiveError(f"{label}: corrupt speaker archive ({e}); re-download {ARCHIVE_NAME}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # its parent is removed by unpack_archive (workers share it)
    return durations, notes


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group; only the main process handles it (the workers
    finish their speaker, whose files the main process then records). A worker starts with SIGINT blocked
    (:func:`_sigint_blocked`): a Ctrl-C while it imports this module waits, and is then dropped here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back in this process for the block, and in the worker processes started in it (a spawned
    worker imports aishell.py for a second before its initializer runs: a Ctrl-C then printed its traceback)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    # multiprocessing's resource tracker, started with the first worker, unblocks SIGINT after starting itself:
    # started before the block, it leaves the mask alone
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` if it is an empty directory (another process may have just put something in it)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _prune_empty_tree(root: Path) -> None:
    """Remove the empty directories under ``root`` (deepest first), and ``root`` itself if it ends up empty."""
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -entry[0].count(os.sep)):
        if not os.path.islink(folder):
            _remove_empty(Path(folder))


# --------------------------------------------------------------------------------------------------
# Unpacking with markers


@contextlib.contextmanager
def _target_lock(target_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target_dir`` (the folder itself, created if missing and removed again if it is
    left empty) for the block: a second aishell.py unpacking into the same folder removed the first one's staged
    transcript, and the first failed. Raises AishellError at once when another run holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    created = [p for p in (target_dir, *target_dir.parents) if not p.exists()]  # deepest first
    target_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(target_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AishellError(f"{target_dir}: another aishell.py is unpacking into this folder; wait for it to "
                               "finish, or give this one another --target_dir") from None
        except OSError as e:  # a file system without locks (some network mounts)
            logger.warning("%s: cannot lock this folder (%s); run one aishell.py at a time in it", target_dir, e)
        yield
    finally:
        os.close(fd)
        for folder in created:
            _remove_empty(folder)


def _marker_dir(target_dir: Path) -> Path:
    return target_dir / DATA_DIR_NAME / MARKER_DIR


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _speaker_marker(target_dir: Path, speaker: str, size: int) -> dict[str, Any] | None:
    """The speaker's marker if it was completely unpacked from a member of ``size`` bytes."""
    marker = _read_json(_marker_dir(target_dir) / f"{speaker}.json")
    if marker is None or marker.get("size") != size or not isinstance(marker.get("wavs"), dict):
        return None
    return marker


def is_unpacked(target_dir: str | os.PathLike, archive: str | os.PathLike | None = None) -> bool:
    """True when an earlier run unpacked everything (from an archive of the same size as ``archive``)."""
    target_dir = Path(target_dir)
    done = _read_json(_marker_dir(target_dir) / ARCHIVE_MARKER)
    if done is None or not isinstance(done.get("speakers"), dict):
        return False
    if archive is not None and done.get("archive_size") != os.path.getsize(archive):
        return False
    if not (target_dir / DATA_DIR_NAME / TRANSCRIPT_PATH).is_file():
        return False
    return all(_speaker_marker(target_dir, spk, size) is not None for spk, size in done["speakers"].items())


def unpack_archive(archive: str | os.PathLike, target_dir: str | os.PathLike, *, num_workers: int = 1,
                   progress: bool = True) -> int:
    """Unpack the transcript and every speaker archive under ``<target_dir>/data_aishell``.

    The outer archive is read once, as a stream (it is never written to). Speakers whose marker says
    they are already unpacked are skipped; the others are unpacked by ``num_workers`` processes.

    Returns:
        The number of speakers unpacked by this call.

    Raises:
        CorruptArchiveError, UnsafeArchiveError, MissingTranscriptError.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    label = str(archive)
    if not archive.is_file():
        raise CorruptArchiveError(f"{archive}: archive not found; pass the downloaded {ARCHIVE_NAME} with "
                                  "--filepath, or leave --filepath out to download it")
    data_dir = target_dir / DATA_DIR_NAME
    marker_dir = _marker_dir(target_dir)
    created = [p for p in (marker_dir, data_dir, *marker_dir.parents) if not p.exists()]  # deepest first
    staged_transcript = data_dir / STAGING_DIR / Path(TRANSCRIPT_PATH).name  # moved in once the archive is accepted
    marker_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(data_dir / STAGING_DIR, ignore_errors=True)  # left by a run that was killed
    speakers: dict[str, int] = {}  # speaker -> size of its member
    unpacked = 0
    found_transcript = False
    executor = (cf.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_ignore_sigint) if num_workers > 1 else None)
    pending: dict[cf.Future, tuple[str, str, int]] = {}

    published: list[tuple[str, dict[str, float]]] = []  # (speaker, wavs) unpacked by this call

    def mark_done(speaker: str, member_name: str, size: int, result: tuple[dict[str, float], list[str]]) -> None:
        nonlocal unpacked
        wavs, notes = result
        for note in notes:
            logger.warning("%s", note)
        published.append((speaker, wavs))
        write_json_atomic(marker_dir / f"{speaker}.json", {"member": member_name, "size": size, "wavs": wavs},
                          indent=None)
        unpacked += 1

    def drain(limit: int) -> None:
        while len(pending) > limit:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                mark_done(*pending.pop(fut), fut.result())

    try:
        logger.info("unpacking %s into %s (%d workers)", archive, data_dir, max(1, num_workers))
        try:
            with open(archive, "rb") as raw, \
                    tqdm.wrapattr(raw, "read", total=archive.stat().st_size, desc=f"unpacking {archive.name}",
                                  disable=not progress) as stream, \
                    tarfile.open(fileobj=stream, mode="r|*", bufsize=_READ_BUFFER) as tar:
                for member in tar:
                    name = member_path(member, label)
                    m = _SPEAKER_MEMBER_RE.match(name)
                    if name == TRANSCRIPT_MEMBER and member.isfile():
                        staged_transcript.parent.mkdir(exist_ok=True)
                        with tar.extractfile(member) as src, atomic_open(staged_transcript, "wb") as dst:
                            while chunk := src.read(_READ_BUFFER):
                                dst.write(chunk)
                        found_transcript = True
                    elif m and member.isfile():
                        speaker = m.group(1)
                        speakers[speaker] = member.size
                        if _speaker_marker(target_dir, speaker, member.size) is not None:
                            continue
                        with tar.extractfile(member) as src:
                            data = src.read()
                        speaker_label = f"{label}:{name}"
                        if executor is None:
                            mark_done(speaker, name, member.size,
                                      _unpack_speaker(data, speaker_label, os.fspath(data_dir)))
                        else:
                            with _sigint_blocked():  # submit() starts the worker processes
                                future = executor.submit(_unpack_speaker, data, speaker_label, os.fspath(data_dir))
                            pending[future] = (speaker, name, member.size)
                            drain(2 * num_workers)  # bound the speaker archives held in memory
                drain(0)
        except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise CorruptArchiveError(f"{archive}: corrupt or truncated archive ({e}); check its md5 "
                                      f"({ARCHIVE_MD5} for {ARCHIVE_NAME}) and download it again") from e
        except BrokenProcessPool as e:
            raise AishellError(f"{archive}: a worker process died while unpacking (out of memory?); run again, "
                               "with a smaller --num_workers if it happens again") from e
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            _remove_empty(data_dir / STAGING_DIR)  # its speakers' folders are gone (also after Ctrl-C)

        if not found_transcript:
            raise MissingTranscriptError(f"{archive}: has no member {TRANSCRIPT_MEMBER}; is this the AISHELL-1 "
                                         f"{ARCHIVE_NAME} (openslr resource 33)?")
        if not speakers:
            raise CorruptArchiveError(f"{archive}: has no speaker archives data_aishell/wav/*.tar.gz; is this the "
                                      f"AISHELL-1 {ARCHIVE_NAME} (openslr resource 33)?")
    except (AishellError, UnsafeArchiveError):
        # a refused archive leaves nothing: undo what this call unpacked (earlier runs' speakers and transcript stay)
        for fut, (speaker, _, _) in pending.items():  # finished by a worker, not yet recorded
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                published.append((speaker, fut.result()[0]))
        staged_transcript.unlink(missing_ok=True)
        _undo_unpack(data_dir, published, created=created)
        raise
    except KeyboardInterrupt:  # the workers finished their speakers (they ignore Ctrl-C): keep and record them
        for fut, (speaker, name, size) in pending.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                mark_done(speaker, name, size, fut.result())
        staged_transcript.unlink(missing_ok=True)
        _remove_empty(data_dir / STAGING_DIR)
        raise
    (data_dir / TRANSCRIPT_PATH).parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged_transcript, data_dir / TRANSCRIPT_PATH)
    _remove_empty(data_dir / STAGING_DIR)
    write_json_atomic(marker_dir / ARCHIVE_MARKER, {"archive": archive.name, "archive_size": archive.stat().st_size,
                                                    "speakers": dict(sorted(speakers.items()))})
    return unpacked


def _undo_unpack(data_dir: Path, published: list[tuple[str, dict[str, float]]], *, created: list[Path]) -> None:
    """Remove the speakers (wavs and markers) one refused unpack_archive call wrote, and the folders it created,
    so the archive leaves nothing behind."""
    marker_dir = data_dir / MARKER_DIR
    for speaker, wavs in published:
        for rel in wavs:
            (data_dir / rel).unlink(missing_ok=True)
        (marker_dir / f"{speaker}.json").unlink(missing_ok=True)
    _prune_empty_tree(data_dir / "wav")
    _prune_empty_tree(data_dir / Path(TRANSCRIPT_PATH).parent)
    _remove_empty(data_dir / STAGING_DIR)
    for folder in created:  # deepest first; only those still empty
        _remove_empty(folder)
    if published:
        logger.info("removed the %d speaker(s) this run had unpacked from the refused archive", len(published))


def _forget_speakers_with_missing_wavs(target_dir: Path) -> int:
    """Remove the marker of every unpacked speaker one of whose wavs is no longer on disk (deleted by hand, a disk
    cleanup), so the next unpack brings it back; returns how many (logged)."""
    data_dir = target_dir / DATA_DIR_NAME
    done = _read_json(_marker_dir(target_dir) / ARCHIVE_MARKER) or {}
    forgotten, missing = [], []
    for speaker, size in (done.get("speakers") or {}).items():
        marker = _speaker_marker(target_dir, speaker, size)
        gone = [rel for rel in (marker or {}).get("wavs", {}) if not (data_dir / rel).is_file()]
        if gone:
            missing += gone
            forgotten.append(speaker)
            (_marker_dir(target_dir) / f"{speaker}.json").unlink(missing_ok=True)
    if forgotten:
        logger.warning("%d unpacked wavs are missing (%s): unpacking speaker(s) %s again", len(missing),
                       _examples(missing, 3), _examples(forgotten))
    return len(forgotten)


def read_unpacked_wavs(target_dir: str | os.PathLike) -> dict[str, float]:
    """{wav path relative to ``<target_dir>/data_aishell``: duration s} of every unpacked speaker."""
    target_dir = Path(target_dir)
    done = _read_json(_marker_dir(target_dir) / ARCHIVE_MARKER)
    if done is None:
        raise AishellError(f"{target_dir}: nothing unpacked yet ({MARKER_DIR}/{ARCHIVE_MARKER} missing)")
    wavs: dict[str, float] = {}
    for speaker, size in done["speakers"].items():
        marker = _speaker_marker(target_dir, speaker, size)
        if marker is None:
            raise AishellError(f"{_marker_dir(target_dir) / speaker}.json: missing or stale; run aishell.py again")
        wavs.update(marker["wavs"])
    return wavs


# --------------------------------------------------------------------------------------------------
# Transcript and manifests


_LATIN_EDGE = re.compile(r"[A-Za-z0-9]")


def join_transcript_words(words: Sequence[str]) -> str:
    """The sentence of a transcript line's words: joined without spaces (the spaces are a word segmentation), but
    two Latin words in a row keep one ("他 住 在 new york 市" → "他住在new york市", not "newyork")."""
    out = ""
    for word in words:
        if out and _LATIN_EDGE.match(out[-1]) and _LATIN_EDGE.match(word[0]):
            out += " "
        out += word
    return out


def read_transcript(path: str | os.PathLike) -> dict[str, str]:
    """Read ``ID word word ...`` lines into {utterance id: words joined without spaces (:func:`join_transcript_words`)}.

    Blank lines are ignored; a line with an id and no words, or a repeated id, is logged and the
    first good line wins.

    Raises:
        MissingTranscriptError: the file does not exist or is not UTF-8.
    """
    path = os.fspath(path)
    texts: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                utt, words = fields[0], fields[1:]
                if not words:
                    logger.warning("%s:%d: utterance %s has no text; left out", path, lineno, utt)
                elif utt in texts:
                    logger.warning("%s:%d: utterance %s repeated; keeping its first line", path, lineno, utt)
                else:
                    texts[utt] = join_transcript_words(words)
    except FileNotFoundError as e:
        raise MissingTranscriptError(f"{path}: transcript file not found; run aishell.py with --filepath "
                                     "to unpack it again") from e
    except UnicodeDecodeError as e:
        raise MissingTranscriptError(f"{path}: not UTF-8 text ({e}); re-download {ARCHIVE_NAME}") from e
    return texts


def build_records(
    wavs: dict[str, float], transcript: dict[str, str], audio_prefix: str
) -> tuple[dict[str, list[dict[str, Any]]], list[str], list[str]]:
    """Match unpacked wavs with transcript lines.

    Args:
        wavs: {``wav/<split>/<speaker>/<id>.wav``: duration s}.
        transcript: {utterance id: sentence}.
        audio_prefix: what to put before each wav path in ``audio.path`` ("" = nothing).

    Returns:
        ({split: records sorted by wav path, i.e. speaker then utterance}, wavs without transcript,
        utterance ids without wav). A wav of 0 s is left out (logged).
    """
    records: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    no_text: list[str] = []
    empty: list[str] = []
    matched: set[str] = set()
    for rel, duration in sorted(wavs.items()):
        m = _WAV_MEMBER_RE.match(rel)
        if m is None or m.group(1) not in records:
            logger.warning("%s: not under wav/{train,dev,test}/<speaker>/; left out", rel)
            continue
        split, utt = m.group(1), m.group(3)
        sentence = transcript.get(utt)
        if sentence is None:
            no_text.append(rel)
            continue
        matched.add(utt)
        duration = round(duration, 3)
        if duration <= 0:  # a manifest line of 0 s stops finetune.py: left out, and listed below
            empty.append(rel)
            continue
        records[split].append({
            "audio": {"path": f"{audio_prefix}{rel}"},
            "sentence": sentence,
            "language": LANGUAGE,
            "sentences": [{"start": 0, "end": duration, "text": sentence}],
            "duration": duration,
        })
    no_wav = sorted(set(transcript) - matched)
    if empty:
        logger.warning("left out %d wavs without audio (0 s): %s", len(empty), _examples(empty))
    return records, no_text, no_wav


def _audio_prefix(data_dir: Path, manifest_dir: Path) -> str:
    """``audio.path`` prefix: relative to the manifest folder when the audio is under it, else absolute."""
    base = relative_audio_path(data_dir, manifest_dir / "train.json")
    return "" if base == "." else base.rstrip("/") + "/"


def _examples(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def prepare_aishell(
    target_dir: str | os.PathLike,
    annotation_dir: str | os.PathLike,
    *,
    archive: str | os.PathLike | None = None,
    num_workers: int = 1,
    urls: Sequence[str] = DOWNLOAD_URLS,
    md5: str | None = ARCHIVE_MD5,
    progress: bool = True,
) -> PrepareSummary:
    """Download (when ``archive`` is None), unpack and write ``train.json``, ``dev.json``, ``test.json``.

    Args:
        target_dir: audio goes to ``<target_dir>/data_aishell/wav/<split>/<speaker>/``.
        annotation_dir: folder for the manifests.
        archive: a local data_aishell.tgz (only read); None downloads to ``<target_dir>/data_aishell.tgz``.
        num_workers: processes unpacking speaker archives and reading wav headers.
        urls, md5: download sources, tried in order, and the expected checksum (None = unchecked).
    """
    target_dir, annotation_dir = Path(target_dir), Path(annotation_dir)
    summary = PrepareSummary()
    if archive is not None and os.path.isdir(archive):
        raise AishellError(f"{archive}: is a folder; --filepath takes the {ARCHIVE_NAME} file itself (an unpacked "
                           f"copy is not read: give the archive, which is only ever read)")
    if archive is not None and not os.path.isfile(archive):
        raise CorruptArchiveError(f"{archive}: archive not found; pass the downloaded {ARCHIVE_NAME} with "
                                  "--filepath, or leave --filepath out to download it")
    with _target_lock(target_dir):  # another run in the same folder would remove this one's staged files
        # 1. Get the archive and unpack what is not unpacked yet (and the speakers whose wavs went missing since)
        if is_unpacked(target_dir, archive) and not _forget_speakers_with_missing_wavs(target_dir):
            logger.info("%s already unpacked (delete %s to unpack again)", target_dir / DATA_DIR_NAME,
                        _marker_dir(target_dir))
        else:
            if archive is None:
                archive = download_archive(target_dir / ARCHIVE_NAME, urls, md5, progress=progress)
            summary.speakers_unpacked = unpack_archive(archive, target_dir, num_workers=num_workers, progress=progress)
        # 2. Match wavs with the transcript
        data_dir = target_dir / DATA_DIR_NAME
        transcript = read_transcript(data_dir / TRANSCRIPT_PATH)
        wavs = read_unpacked_wavs(target_dir)
        records, no_text, no_wav = build_records(wavs, transcript, _audio_prefix(data_dir, annotation_dir))
        if not any(records.values()):  # nothing to train on: the manifests already there stay
            raise AishellError(
                f"{data_dir}: none of the {len(wavs)} unpacked wavs matched a transcript line under "
                f"wav/{{train,dev,test}}/<speaker>/ (examples: {_examples(sorted(wavs), 3) or 'none'}; transcript ids: "
                f"{_examples(sorted(transcript), 3) or 'none'}); is {ARCHIVE_NAME} the AISHELL-1 release? No manifest "
                "written")
        # 3. Write the manifests atomically, all three or none (train, dev and test of one run belong together)
        write_jsonlines_together({annotation_dir / f"{split}.json": records[split] for split in SPLITS})
        for split in SPLITS:
            summary.manifests[split] = annotation_dir / f"{split}.json"
            summary.utterances[split] = len(records[split])
            summary.hours[split] = sum(r["duration"] for r in records[split]) / 3600
        summary.wavs_without_transcript = len(no_text)
        summary.transcripts_without_wav = len(no_wav)
        # 4. Summary
        for split in SPLITS:
            logger.info("%-5s %7d utterances %8.2f h → %s", split, summary.utterances[split], summary.hours[split],
                        summary.manifests[split])
            if not records[split]:
                logger.warning("%s: no utterances in the %s split", summary.manifests[split], split)
        logger.info("skipped %d wavs without a transcript line%s", len(no_text),
                    f" ({_examples(no_text)})" if no_text else "")
        logger.info("%d transcript lines have no wav%s", len(no_wav), f" ({_examples(no_wav)})" if no_wav else "")
        return summary


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "Prepare AISHELL-1 (openslr 33): download or take data_aishell.tgz, unpack it, write train.json, "
        "dev.json and test.json. audio.path in the manifests is RELATIVE TO THE MANIFEST'S FOLDER when the "
        "audio lies under --annotation_text (the manifest reader resolves it against the manifest file's "
        "folder, so the manifests work from any working directory), and absolute otherwise."
    )
    parser.add_argument("--filepath", type=optional_path, default=None,
                        help=f"local {ARCHIVE_NAME} (only read, never changed); without it the archive is "
                             f"downloaded (resumable, md5-checked) from {DOWNLOAD_URLS[0]} or the mirror")
    parser.add_argument("--target_dir", type=path_arg, default="dataset/audio",
                        help="where the audio is unpacked (<target_dir>/data_aishell/wav/<split>/<speaker>/)")
    parser.add_argument("--annotation_text", type=path_arg, default="dataset/",
                        help="folder for train.json, dev.json, test.json; audio.path is relative to this "
                             "folder when the audio is under it, absolute otherwise")
    parser.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes unpacking speaker archives and reading wav durations")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error(f"--num_workers must be at least 1, got {args.num_workers}")
    check_output_path(parser, "--target_dir", args.target_dir, folder=True)
    check_output_path(parser, "--annotation_text", args.annotation_text, folder=True)
    setup_logging()
    try:
        prepare_aishell(args.target_dir, args.annotation_text, archive=args.filepath, num_workers=args.num_workers,
                        urls=DOWNLOAD_URLS, md5=ARCHIVE_MD5)
    except (AishellError, DownloadError, UnsafeArchiveError) as e:
        logger.error("%s", e)
        return 1
    except OSError as e:  # e.g. no space left or no permission in --target_dir / --annotation_text
        logger.error("cannot write the dataset: %s; make room or fix permissions in %s (audio) and %s (manifests), "
                     "then run the same command again (the speakers unpacked completely are kept)", e,
                     args.target_dir, args.annotation_text)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted: the speakers unpacked completely are kept, no manifest was written; run the same "
                     "command again to go on")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
