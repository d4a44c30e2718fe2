"""Safe tar extraction: unsafe members are refused before anything is written for them.

Refused: absolute paths, '..', links leaving the target, devices and fifos; the message names the archive and
the member."""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import PureWindowsPath
from typing import Any

_EXTRACT_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder (absolute path, '..', outside link)."""


def member_path(member: tarfile.TarInfo, label: str) -> str:
    """The member's normalised relative path; refuses absolute paths, '..' and links leaving the target."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or os.path.isabs(name):
        raise UnsafeArchiveError(f"{label}: member {name!r} has an absolute path; refusing to unpack this archive")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"{label}: member {name!r} contains '..'; refusing to unpack this archive")
    path = posixpath.normpath(name.replace("\\", "/"))
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        # a symlink is relative to its own folder, a hard link to the archive root
        base = posixpath.dirname(path) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or PureWindowsPath(link).drive or target == ".." or target.startswith("../"):
            raise UnsafeArchiveError(f"{label}: member {name!r} is a link to {member.linkname!r}, outside the "
                                     "target folder; refusing to unpack this archive")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{label}: member {name!r} is a device or fifo; refusing to unpack this archive")
    return path


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, label: str) -> None:
    try:
        tar.extract(member, dest, **_EXTRACT_FILTER)
    except tarfile.FilterError as e:  # the data filter's own checks (e.g. a path through a symlink)
        raise UnsafeArchiveError(
            f"{label}: member {member.name!r} refused ({e}); refusing to unpack this archive") from e
