"""Ingestion of hostile folders: links out of the folder, kernel files, oversized files, killed runs.

Real parts throughout (SQLite, Qdrant Edge, the bundled embedder). Documents carry made-up words
("zorblax", "quindle") so a keyword search proves whether their text reached the index.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kbot.errors import DocumentLoadError
from kbot.settings import Settings
from knowledge import ingest
from knowledge.base import KnowledgeBase
from knowledge.embeddings import SentenceTransformerEmbedder
from knowledge.ingest import IngestLimits, Ingestor
from knowledge.loaders import load_document
from tests.kbot_process import KBOT, kbot

ROOT = Path(__file__).resolve().parent.parent
OUT_FILE = "symlink to a file outside the folder (not followed)"
OUT_FOLDER = "symlink to a folder outside the folder (not followed)"
NOT_FOLLOWED = "symlink (use --follow-symlinks to follow links inside the folder)"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """docs/ (to ingest) beside outside/ (not to be read); the test runs from their parent."""
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    docs.mkdir()
    outside.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nThe quindle form is filed with HR.\n")
    (outside / "secret.md").write_text("# Secret\n\nThe zorblax token is 4711.\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def sources_for(kb: KnowledgeBase, words: str) -> set[str]:
    """Sources whose text matches ``words`` by keyword (sparse search: exact words or nothing)."""
    return {hit.source for hit in await kb.search(words, ["hr"], limit=20, mode="sparse")}


# --- Links ------------------------------------------------------------------------------------


@pytest.mark.parametrize("follow", [False, True])
async def test_a_link_to_a_file_outside_is_skipped_and_never_indexed(
    kb: KnowledgeBase, tree: Path, follow: bool
) -> None:
    (tree / "docs" / "leak.md").symlink_to("../outside/secret.md")
    (tree / "docs" / "passwd.txt").symlink_to("/etc/passwd")
    report = await kb.ingest(["docs"], "hr", follow_symlinks=follow)
    assert report.added == ["docs/guide.md"]
    assert ("docs/leak.md", OUT_FILE) in report.skipped
    assert ("docs/passwd.txt", OUT_FILE) in report.skipped
    assert await sources_for(kb, "quindle form") == {"docs/guide.md"}
    assert await sources_for(kb, "zorblax token") == set()
    assert await sources_for(kb, "root bin bash nologin") == set()


@pytest.mark.parametrize("follow", [False, True])
async def test_a_link_to_a_folder_outside_is_skipped_and_never_walked(
    kb: KnowledgeBase, tree: Path, follow: bool
) -> None:
    (tree / "docs" / "external").symlink_to(tree / "outside", target_is_directory=True)
    report = await kb.ingest(["docs"], "hr", follow_symlinks=follow)
    assert report.skipped == [("docs/external", OUT_FOLDER)]
    assert report.added == ["docs/guide.md"]
    assert await sources_for(kb, "zorblax token") == set()


async def test_links_inside_the_folder_are_followed_only_when_asked(kb: KnowledgeBase, tree: Path) -> None:
    docs = tree / "docs"
    (docs / "real").mkdir()
    (docs / "real" / "notes.md").write_text("# Notes\n\nThe vexillary rota is on Mondays.\n")
    (docs / "notes-link.md").symlink_to("real/notes.md")
    (docs / "alias").symlink_to("real", target_is_directory=True)
    (docs / "real" / "up").symlink_to("..", target_is_directory=True)  # a loop

    plain = await kb.ingest(["docs"], "hr")
    assert sorted(plain.added) == ["docs/guide.md", "docs/real/notes.md"]
    assert ("docs/notes-link.md", NOT_FOLLOWED) in plain.skipped
    assert ("docs/alias", NOT_FOLLOWED) in plain.skipped
    assert await sources_for(kb, "vexillary rota") == {"docs/real/notes.md"}

    followed = await kb.ingest(["docs"], "hr", follow_symlinks=True)
    assert sorted(followed.added) == ["docs/alias/notes.md", "docs/notes-link.md"]
    assert (
        "docs/real/up",
        "symlink to a folder that is being walked (a loop; not followed)",
    ) in followed.skipped
    assert await sources_for(kb, "vexillary rota") == {
        "docs/real/notes.md",
        "docs/notes-link.md",
        "docs/alias/notes.md",
    }

    # Without the option again, what only the links brought in leaves the collection.
    again = await kb.ingest(["docs"], "hr")
    assert sorted(again.deleted) == ["docs/alias/notes.md", "docs/notes-link.md"]
    assert await sources_for(kb, "vexillary rota") == {"docs/real/notes.md"}


async def test_a_link_to_a_hidden_file_is_not_followed(kb: KnowledgeBase, tree: Path) -> None:
    git = tree / "docs" / ".git"
    git.mkdir()
    (git / "config").write_text("[remote]\nurl = https://bot:zorblax@git.example.com/docs\n")
    (tree / "docs" / "config.txt").symlink_to(".git/config")
    report = await kb.ingest(["docs"], "hr", follow_symlinks=True)
    assert ("docs/config.txt", "symlink to a hidden file or folder (not followed)") in report.skipped
    assert report.added == ["docs/guide.md"]
    assert await sources_for(kb, "zorblax remote url") == set()


async def test_a_named_link_is_judged_against_the_folder_it_is_named_in(
    kb: KnowledgeBase, tree: Path
) -> None:
    docs = tree / "docs"
    (docs / "leak.md").symlink_to("../outside/secret.md")
    (docs / "alias.md").symlink_to("guide.md")

    for follow in (False, True):
        refused = await kb.ingest(["docs/leak.md"], "hr", follow_symlinks=follow)
        assert refused.skipped == [("docs/leak.md", OUT_FILE)]
        assert (refused.added, refused.failed) == ([], [])
        assert await sources_for(kb, "zorblax token") == set()

    assert (await kb.ingest(["docs/alias.md"], "hr")).skipped == [("docs/alias.md", NOT_FOLLOWED)]
    inside = await kb.ingest(["docs/alias.md"], "hr", follow_symlinks=True)
    assert inside.added == ["docs/alias.md"]
    assert await sources_for(kb, "quindle form") == {"docs/alias.md"}


def _record_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened through os.open or open() from now on (pathlib's reads included)."""
    opened: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_os_open(path, *args, **kwargs)

    def py_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | bytes | os.PathLike):
            opened.append(os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    return opened


async def test_proc_is_never_read_named_or_linked(
    kb: KnowledgeBase, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "docs" / "environ.txt").symlink_to("/proc/self/environ")
    (tree / "docs" / "cmdline.txt").symlink_to("/proc/self/cmdline")
    # The loaders' own check, for a caller that names a file without discovery in front of it.
    with pytest.raises(DocumentLoadError, match="never reads"):
        load_document(tree / "docs" / "environ.txt")
    opened = _record_opens(monkeypatch)
    report = await kb.ingest(["docs", "/proc/self/environ", "/proc/self/status"], "hr", follow_symlinks=True)
    linked = "symlink into /proc, /sys or /dev (not followed: kbot never reads those)"
    named = "under /proc, /sys or /dev, which kbot never reads"
    assert ("docs/environ.txt", linked) in report.skipped
    assert ("docs/cmdline.txt", linked) in report.skipped
    assert ("/proc/self/environ", named) in report.skipped
    assert ("/proc/self/status", named) in report.skipped
    assert report.added == ["docs/guide.md"]
    assert any(p.endswith("docs/guide.md") for p in opened)  # the spy sees ingest's reads
    assert [p for p in opened if p.startswith("/proc/")] == []


# --- Per-file limits --------------------------------------------------------------------------


async def test_text_over_the_default_character_limit_fails_alone_and_fast(
    kb: KnowledgeBase, tree: Path
) -> None:
    # One line of 2.1 million characters, no sentence end: the shape that took minutes before.
    (tree / "docs" / "dump.txt").write_text("lorem ipsum dolor " * 116_667)
    started = time.perf_counter()
    report = await kb.ingest(["docs"], "hr")
    elapsed = time.perf_counter() - started
    assert report.failed == [
        (
            "docs/dump.txt",
            "extracted text is over the 2,000,000-character limit per file (2,100,005 characters)",
        )
    ]
    assert report.added == ["docs/guide.md"]
    assert await sources_for(kb, "quindle form") == {"docs/guide.md"}
    assert await sources_for(kb, "lorem ipsum dolor") == set()
    assert elapsed < 30, f"refusing the file took {elapsed:.1f} s"


def _small_ingestor(kb: KnowledgeBase, limits: IngestLimits) -> Ingestor:
    return Ingestor(kb.catalog, kb.store, kb.embedder, chunk_tokens=128, overlap_tokens=16, limits=limits)


async def test_each_limit_fails_only_its_file(kb: KnowledgeBase, tree: Path) -> None:
    docs = tree / "docs"
    paragraphs = "\n\n".join(f"Paragraph {i} of the rulebook says {'many words ' * 40}." for i in range(10))
    (docs / "long.md").write_text(f"# Rules\n\n{paragraphs}\n")
    (docs / "wordy.txt").write_text("The quarterly report. " * 300)
    (docs / "big.txt").write_bytes(b"x" * 50_000)  # one unknown token: cheap to embed later
    ingestor = _small_ingestor(kb, IngestLimits(max_bytes=20_000, max_chars=5_000, max_chunks=3))
    report = await ingestor.run(["docs"], "hr")
    failed = dict(report.failed)
    assert failed.keys() == {"docs/long.md", "docs/wordy.txt", "docs/big.txt"}
    assert failed["docs/big.txt"] == "the file is over the 20,000 bytes limit per file (50,000 bytes)"
    assert failed["docs/wordy.txt"].startswith("extracted text is over the 5,000-character limit per file")
    assert "over the 3-chunk limit per file" in failed["docs/long.md"]
    assert report.added == ["docs/guide.md"]

    roomy = await _small_ingestor(kb, IngestLimits()).run(["docs"], "hr")
    assert sorted(roomy.added) == ["docs/big.txt", "docs/long.md", "docs/wordy.txt"]
    assert roomy.unchanged == ["docs/guide.md"]


def _docx(document_xml: Callable[[zipfile.ZipFile], None], extra: dict[str, bytes] | None = None) -> bytes:
    """A minimal DOCX whose word/document.xml the callback writes (streamed: it may be large)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            'relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
            '2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>',
        )
        document_xml(archive)
        for name, data in (extra or {}).items():
            archive.writestr(name, data, zipfile.ZIP_STORED)
    return out.getvalue()


def _paragraphs(count: int) -> Callable[[zipfile.ZipFile], None]:
    def write(archive: zipfile.ZipFile) -> None:
        with archive.open("word/document.xml", "w") as part:
            part.write(
                b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
            )
            for _ in range(count // 1000):
                part.write(b"<w:p><w:r><w:t>Sick leave is ten days.</w:t></w:r></w:p>" * 1000)
            part.write(b"</w:body></w:document>")

    return write


@pytest.mark.parametrize("padded", [False, True])
def test_a_docx_bomb_is_refused_by_its_unpack_ratio_quickly(padded: bool) -> None:
    # The same paragraphs, a thousand of them, make a real (if dull) document.
    small = load_document(Path("ok.docx"), "ok.docx", _docx(_paragraphs(1000)))
    assert "Sick leave is ten days." in small.sections[0].text
    # ~5.5 MB of XML in ~20 KB; padded, 1 MB of random bytes beside it lowers the file's overall
    # ratio to ~5, but the XML part's own ratio still gives it away.
    extra = {"word/media/noise.bin": os.urandom(1024**2)} if padded else None
    data = _docx(_paragraphs(100_000), extra)
    assert len(data) < (1024**2 + 100_000 if padded else 100_000)
    started = time.perf_counter()
    with pytest.raises(DocumentLoadError, match="as only a zip bomb does"):
        load_document(Path("bomb.docx"), "bomb.docx", data)
    assert time.perf_counter() - started < 2


async def test_a_docx_bomb_fails_alone(kb: KnowledgeBase, tree: Path) -> None:
    (tree / "docs" / "bomb.docx").write_bytes(_docx(_paragraphs(100_000)))
    report = await kb.ingest(["docs"], "hr")
    [(source, reason)] = report.failed
    assert source == "docs/bomb.docx" and reason.startswith("it unpacks to 5.") and "zip bomb" in reason
    assert report.added == ["docs/guide.md"]


# --- Killed runs ------------------------------------------------------------------------------


class _Killed(BaseException):
    """Stands for the run's death: not an Exception, so nothing in ingest may swallow it."""


def _three_files(tree: Path) -> None:
    docs = tree / "docs"
    (docs / "guide.md").unlink()
    (docs / "a.md").write_text("# A\n\nThe alpaca roster is pinned in the lobby.\n")
    (docs / "b.md").write_text("# B\n\nThe bassoon budget is frozen.\n")
    (docs / "c.md").write_text("# C\n\nThe cormorant clause applies.\n")


async def test_files_finished_before_a_crash_are_kept(
    kb: KnowledgeBase, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_files(tree)
    real_load = load_document  # what ingest calls, by its own name

    def load(path: Path, source: str | None = None, data: bytes | None = None) -> Any:
        if source == "docs/b.md":
            raise _Killed
        return real_load(path, source, data)

    monkeypatch.setattr(ingest, "load_document", load)
    with pytest.raises(_Killed):
        await kb.ingest(["docs"], "hr")
    assert list(await kb.catalog.documents("hr")) == ["docs/a.md"]
    assert await sources_for(kb, "alpaca roster") == {"docs/a.md"}

    monkeypatch.setattr(ingest, "load_document", real_load)
    again = await kb.ingest(["docs"], "hr")
    assert (again.unchanged, sorted(again.added)) == (["docs/a.md"], ["docs/b.md", "docs/c.md"])


_KILLED_RUN = """
import asyncio, os, signal, sys
from pathlib import Path
from kbot.settings import Settings
from knowledge import ingest
from knowledge.base import KnowledgeBase

real_load = ingest.load_document

def load(path, source=None, data=None):
    if source == "docs/b.md":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_load(path, source, data)

ingest.load_document = load

async def main():
    settings = Settings(data_dir=Path(sys.argv[1]), chunk_tokens=128, chunk_overlap_tokens=16)
    kb = await KnowledgeBase.open(settings)
    await kb.ingest(["docs"], "hr")

asyncio.run(main())
"""


async def test_files_finished_before_a_kill_9_are_kept(
    settings: Settings, embedder: SentenceTransformerEmbedder, tree: Path
) -> None:
    _three_files(tree)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(settings.data_dir)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr

    kb = await KnowledgeBase.open(settings, embedder=embedder)
    try:
        assert list(await kb.catalog.documents("hr")) == ["docs/a.md"]
        assert await sources_for(kb, "alpaca roster") == {"docs/a.md"}
        again = await kb.ingest(["docs"], "hr")
        assert (again.unchanged, sorted(again.added)) == (["docs/a.md"], ["docs/b.md", "docs/c.md"])
    finally:
        await kb.close()


# --- The command ------------------------------------------------------------------------------


def test_ingest_help_explains_follow_symlinks() -> None:
    result = subprocess.run([*KBOT, "ingest", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "--follow-symlinks" in text
    assert "Follow symbolic links whose target stays inside the folder they are in" in text
    assert "never followed" in text


def test_ingest_lists_the_links_it_skipped(tree: Path) -> None:
    docs = tree / "docs"
    (docs / "guide.md").unlink()  # nothing to embed: the command stays cheap
    (docs / "leak.md").symlink_to("../outside/secret.md")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n")
    (docs / "picture.md").symlink_to("photo.png")
    env = {**os.environ, "KBOT_DATA_DIR": str(tree / "state"), "PYTHONPATH": str(ROOT)}
    env.pop("KBOT_DATABASE_URL", None)
    env.pop("KBOT_QDRANT_URL", None)
    result = kbot("ingest", "docs", "--collection", "hr", cwd=tree, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hr: 0 added, 0 updated, 0 unchanged, 0 deleted, 0 failed;")
    assert f"skipped: docs/leak.md: {OUT_FILE}" in result.stderr
    assert f"skipped: docs/picture.md: {NOT_FOLLOWED}" in result.stderr
    assert "skipped 1 files of unsupported types" in result.stderr
