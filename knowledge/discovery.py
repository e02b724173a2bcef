"""Which files an ingest may read: the folders it is given, and nothing a link leads to outside them.

An ingested folder is often someone else's content (a docs repository; git keeps symlinks), and
whatever ingest reads becomes searchable. So:

- A symbolic link, to a file or a folder, is not followed. With ``follow_symlinks`` it is
  followed only when its fully resolved target stays inside the walked folder; a link that
  leads out of it never is.
- A path named on the command line is held to the same rule, its folder being the directory it
  was named in: ``docs/x.md`` may link to ``docs/y.md`` (with ``follow_symlinks``), not elsewhere.
- Nothing under /proc, /sys or /dev is read, whether named, walked or linked to.
- A folder reached through links is walked once; a link back to a folder being walked is a
  loop and not followed.
- Names starting with "." (``.git``, ``.env``) are not walked, nor followed to by a link
  (``.git/config`` may hold a remote's credentials).

Each refused path is reported as skipped with its reason. Each file found carries the resolved
path that was checked: readers open that path, not the link (see ``knowledge.loaders``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from knowledge.loaders import SYSTEM_REASON, is_system_path

LINK_NOT_FOLLOWED = "symlink (use --follow-symlinks to follow links inside the folder)"
LINK_TO_SYSTEM = "symlink into /proc, /sys or /dev (not followed: kbot never reads those)"
LINK_BROKEN = "symlink to nothing (broken link)"
LINK_LOOP = "symlink to a folder that is being walked (a loop; not followed)"
LINK_AGAIN = "symlink to a folder already walked through another link (not followed again)"
LINK_OUT_FILE = "symlink to a file outside the folder (not followed)"
LINK_OUT_FOLDER = "symlink to a folder outside the folder (not followed)"
LINK_HIDDEN = "symlink to a hidden file or folder (not followed)"
NOT_REGULAR = "not a regular file"
UNSUPPORTED = "unsupported file type"

# Reasons that refuse a path for safety: a document once ingested under one of them is removed.
REFUSED = frozenset({
    LINK_NOT_FOLLOWED, LINK_TO_SYSTEM, LINK_BROKEN, LINK_LOOP, LINK_AGAIN, LINK_OUT_FILE,
    LINK_OUT_FOLDER, LINK_HIDDEN, SYSTEM_REASON,
})  # fmt: skip


@dataclass(frozen=True)
class Found:
    """A file to ingest: ``path`` is resolved and checked (open this), ``source`` names the document."""

    path: Path
    source: str


@dataclass
class Discovery:
    files: list[Found] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # walked folders, as given (deletions)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def refused(self) -> set[str]:
        """Sources refused for safety (links, system paths): not to be kept in a collection."""
        return {source for source, reason in self.skipped if reason in REFUSED}


def discover(
    paths: Sequence[str], *, follow_symlinks: bool, is_supported: Callable[[Path], bool]
) -> Discovery:
    """Walk ``paths`` by the rules above; files are returned once per source, sorted by source."""
    walker = _Walker(follow_symlinks, is_supported)
    for given in paths:
        walker.argument(os.path.normpath(given))
    found = walker.found
    walker.result.files = [found[source] for source in sorted(found)]
    walker.result.skipped = sorted(set(walker.result.skipped))
    return walker.result


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


_Identity = tuple[int, int]  # (device, inode): one folder, whatever the path to it


def _identity(path: str) -> _Identity | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class _Walker:
    def __init__(self, follow: bool, is_supported: Callable[[Path], bool]) -> None:
        self.follow = follow
        self.is_supported = is_supported
        self.result = Discovery()
        self.found: dict[str, Found] = {}
        self.linked: set[_Identity] = set()  # folders entered through a link, ever

    def argument(self, base: str) -> None:
        if os.path.islink(base):
            # The folder a named link is judged against is the one it was named in.
            target = self.link_target(base, os.path.realpath(os.path.dirname(base) or "."), base)
            if target is None:
                return
        else:
            target = os.path.realpath(base)
            if is_system_path(target):
                self.result.skipped.append((base, SYSTEM_REASON))
                return
        if os.path.isdir(target):
            self.result.folders.append(base)
            self.walk(target, base)
        elif os.path.isfile(target):
            if self.is_supported(Path(base)):
                self.found[base] = Found(Path(target), base)
            else:
                self.result.failed.append((base, UNSUPPORTED))
        elif os.path.lexists(base):
            self.result.failed.append((base, "not a regular file or folder"))
        else:
            self.result.failed.append((base, "no such file or folder"))

    def link_target(self, link: str, root: str, source: str) -> str | None:
        """The resolved target of ``link`` if it may be followed, else None (``source`` skipped)."""
        target = os.path.realpath(link)
        reason = None
        if is_system_path(target):
            reason = LINK_TO_SYSTEM
        elif not os.path.exists(target):
            reason = LINK_BROKEN
        elif not _inside(target, root):
            reason = LINK_OUT_FOLDER if os.path.isdir(target) else LINK_OUT_FILE
        elif any(part.startswith(".") for part in Path(os.path.relpath(target, root)).parts):
            reason = LINK_HIDDEN  # .git/config may hold a remote's credentials
        elif not self.follow:
            reason = LINK_NOT_FOLLOWED
        if reason is not None:
            self.result.skipped.append((source, reason))
            return None
        return target

    def walk(self, top: str, top_source: str) -> None:
        """Walk the folder ``top`` (resolved), whose files are named under ``top_source``."""
        # Iterative, so a deep tree cannot exhaust the interpreter's recursion limit. Each folder
        # carries the folders above it, to tell a loop from a second link to the same folder.
        identity = _identity(top)
        if identity is None:
            self.result.failed.append((top_source, "cannot read this folder"))
            return
        stack = [(top, top_source, frozenset({identity}))]
        while stack:
            folder, source, above = stack.pop()
            for name, entry_path, is_link in self.entries(folder, source):
                child = os.path.normpath(os.path.join(source, name))
                path = self.link_target(entry_path, top, child) if is_link else entry_path
                if path is None:
                    continue
                if not os.path.isdir(path):
                    self.add_file(child, path, top)
                elif is_system_path(path):
                    self.result.skipped.append((child, SYSTEM_REASON))  # ingesting "/" must not walk /proc
                elif (identity := _identity(path)) is None:
                    self.result.failed.append((child, "cannot read this folder"))
                elif not is_link or self.enter_linked(child, identity, above):
                    stack.append((path, child, above | {identity}))

    def add_file(self, child: str, path: str, top: str) -> None:
        if not os.path.isfile(path):
            self.result.skipped.append((child, NOT_REGULAR))
            return
        # Checked once more as a whole: a folder above may have been swapped for a link meanwhile.
        resolved = os.path.realpath(path)
        if is_system_path(resolved):
            self.result.skipped.append((child, SYSTEM_REASON))
        elif not _inside(resolved, top):
            self.result.skipped.append((child, LINK_OUT_FILE))
        elif self.is_supported(Path(child)):
            self.found[child] = Found(Path(resolved), child)
        else:
            self.result.skipped.append((child, UNSUPPORTED))

    def enter_linked(self, child: str, identity: _Identity, above: frozenset[_Identity]) -> bool:
        """Whether a folder reached through a link is walked: once, and never inside itself."""
        if identity in above:
            self.result.skipped.append((child, LINK_LOOP))
            return False
        if identity in self.linked:
            self.result.skipped.append((child, LINK_AGAIN))
            return False
        self.linked.add(identity)
        return True

    def entries(self, folder: str, source: str) -> Iterator[tuple[str, str, bool]]:
        """(name, path, is a link) of a folder's visible entries, by name."""
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            self.result.failed.append((source, f"cannot list this folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_link = entry.is_symlink()
            except OSError as exc:
                self.result.failed.append((os.path.join(source, entry.name), f"cannot read: {exc}"))
                continue
            yield entry.name, entry.path, is_link
