"""Resumable, checksummed downloads over HTTP(S).

Bytes go to ``<dest>.part``, an interrupted download continues with a Range request, mirrors are tried in
order, and the file appears under its name only once complete and its md5 matches."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A file could not be downloaded, or its checksum is wrong; the message says what to do."""


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex md5 of a file, read in ``chunk_size`` byte pieces."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` → (100, 1000); ``bytes */1000`` → (None, 1000); unknown parts are None."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch(url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing after the bytes already in it (HTTP Range)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "whisper-finetune/1.0"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left after `offset`: complete already, or a stale .part
            _, total = _parse_content_range(e.headers.get("Content-Range"))
            if total == offset:
                return
            logger.warning("%s: server refused to resume at byte %d; starting over", url, offset)
            part.unlink()
        raise
    with resp:
        start, total = _parse_content_range(resp.headers.get("Content-Range"))
        if resp.status == 206:
            if start != offset:
                part.unlink(missing_ok=True)
                raise http.client.HTTPException(f"asked for bytes from {offset}, got bytes from {start}; starting over")
            mode = "ab"
        else:
            if offset:
                logger.warning("%s: server ignored the resume request; downloading from the start", url)
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        logger.info("downloading %s → %s%s", url, part, f" (resuming at byte {offset})" if offset else "")
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                         desc=part.name, disable=not progress) as bar:
            while chunk := resp.read(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)


def download_file(
    dest: str | os.PathLike,
    urls: Sequence[str],
    md5: str | None = None,
    *,
    hint: str = "pass a copy downloaded with another tool",
    retries: int = 5,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download a file to ``dest`` with resume and checksum; returns ``dest``.

    Bytes go to ``dest + ".part"`` first; an interrupted download (this run or an earlier one) continues
    from where it stopped with an HTTP Range request. ``urls`` are tried in order (official, then mirror);
    a URL is given up after ``retries`` failures in a row that brought no new bytes, waiting
    ``retry_wait`` seconds after the first and twice as long after each next one. When complete, the
    md5 is checked and the file renamed to ``dest``.
    An existing ``dest`` with the right md5 is reused.

    Raises:
        DownloadError: every URL failed, or the md5 does not match (the bad ``.part`` is then removed).
    """
    dest = Path(dest)
    if dest.is_file():
        got = file_md5(dest) if md5 else None
        if got == (md5.lower() if md5 else None):
            logger.info("%s already downloaded", dest)
            return dest
        raise DownloadError(f"{dest}: exists but its md5 is {got}, expected {md5}; delete it and run again, "
                            f"or {hint}")
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors: dict[str, int] = {}  # error → how many times, in order
    for url in urls:
        failures = 0  # in a row without progress; a dropped connection that delivered bytes does not count
        while failures < retries:
            before = part.stat().st_size if part.exists() else 0
            permanent = False
            try:
                _fetch(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
            except urllib.error.HTTPError as e:
                error = f"{url}: HTTP {e.code} {e.reason}"
                logger.warning("download failed: %s", error)
                permanent = e.code in (401, 403, 404, 410)  # try the next URL
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                error = f"{url}: {type(e).__name__}: {e}"
                logger.warning("download interrupted: %s", error)
                # the host name does not resolve (no network, no DNS): retrying it only waits (2 minutes before)
                permanent = isinstance(getattr(e, "reason", e), socket.gaierror)
            else:
                return _finish_download(part, dest, md5)
            errors[error] = errors.get(error, 0) + 1
            if permanent:
                break
            grew = part.exists() and part.stat().st_size > before
            failures = 0 if grew else failures + 1
            if failures < retries:
                time.sleep(0 if grew else retry_wait * 2 ** (failures - 1))
    if not part.exists():  # nothing downloaded: leave no empty folder behind
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
    said = "; ".join(f"{error} ({n} times)" if n > 1 else error for error, n in errors.items())
    raise DownloadError(f"cannot download {dest.name} ({said}). Download it with another tool and "
                        f"{hint}; the partial download {part} (if any) is resumed next time")


def _finish_download(part: Path, dest: Path, md5: str | None) -> Path:
    if md5:
        logger.info("checking the md5 of %s", part)
        got = file_md5(part)
        if got != md5.lower():
            part.unlink()
            raise DownloadError(f"{part}: md5 {got} does not match the expected {md5}; the corrupt download "
                                "was removed, run again to download it afresh")
    os.replace(part, dest)
    return dest
