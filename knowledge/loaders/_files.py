"""Opening a document file without being led elsewhere: no link, no device, no kernel file.

The path opened is the resolved one a caller has checked, so its last component must not be a
link (``O_NOFOLLOW``: a link swapped in after the check is refused, not followed), the opened
file must be a regular file, and nothing under /proc, /sys or /dev is read: their "files" are
the kernel's, /proc/self/environ holds the process's secrets and is a regular file of size 0.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from kbot.errors import DocumentLoadError

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
SYSTEM_REASON = "under /proc, /sys or /dev, which kbot never reads"


def is_system_path(resolved: str) -> bool:
    """Whether a resolved, absolute path lies under /proc, /sys or /dev."""
    return any(resolved == root or resolved.startswith(root + os.sep) for root in SYSTEM_ROOTS)


@functools.cache
def _system_devices() -> frozenset[int]:
    # procfs, sysfs and devtmpfs mounted elsewhere (a bind mount) still have these devices. Only
    # mount points count: a plain /dev folder on the root file system shares its device.
    devices = set()
    for root in SYSTEM_ROOTS:
        try:
            if os.path.ismount(root):
                devices.add(os.stat(root).st_dev)
        except OSError:
            continue  # a system without /sys (a container, macOS): nothing to refuse there
    return frozenset(devices)


_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)


@contextmanager
def open_document(path: Path, source: str, *, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """Open ``path`` (resolved and checked by the caller) for reading, or raise DocumentLoadError.

    ``O_NONBLOCK`` keeps a named pipe from blocking the open; it is then refused as not regular.
    ``max_bytes`` refuses a larger file before a byte of it is read.
    """
    if is_system_path(os.path.abspath(path)):
        raise DocumentLoadError(source, SYSTEM_REASON)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        raise _open_error(source, exc) from exc
    try:
        _check_opened(os.fstat(fd), source, max_bytes)
    except (OSError, DocumentLoadError):
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        yield handle


def _check_opened(info: os.stat_result, source: str, max_bytes: int | None) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise DocumentLoadError(source, "this is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        # Devices and sockets hold no document; reading a pipe would wait for a writer.
        raise DocumentLoadError(source, "not a regular file")
    if info.st_dev in _system_devices():
        raise DocumentLoadError(source, SYSTEM_REASON)
    if max_bytes is not None and info.st_size > max_bytes:
        limit, size = _megabytes(max_bytes), _megabytes(info.st_size)
        raise DocumentLoadError(source, f"the file is over the {limit} limit per file ({size})")


def read_document(path: Path, source: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, opened as :func:`open_document` does."""
    with open_document(path, source, max_bytes=max_bytes) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise _open_error(source, exc) from exc


def _open_error(source: str, exc: OSError) -> DocumentLoadError:
    if exc.errno == errno.ELOOP:
        return DocumentLoadError(source, "it is a symlink now, which is not followed")
    if exc.errno == errno.EISDIR:
        return DocumentLoadError(source, "this is a directory, not a file")
    if isinstance(exc, FileNotFoundError):
        return DocumentLoadError(source, "the file does not exist")
    if isinstance(exc, PermissionError):
        return DocumentLoadError(source, "permission denied: kbot may not read this file")
    return DocumentLoadError(source, f"the file cannot be read: {exc.strerror or exc}")


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB" if size >= 1024**2 else f"{size:,} bytes"
