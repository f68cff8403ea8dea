"""Read a corpus — files, folders, globs, compressed files or any iterable of strings — as a
stream of text chunks, never as one string.

Characters are Unicode code points. A leading byte-order mark is dropped, ``\\r\\n`` and lone
``\\r`` become ``\\n`` (switch off with ``normalize_newlines=False``), and invalid UTF-8 is an
error naming the file and byte offset unless ``encoding_errors="replace"``.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import lzma
import os
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lstmgen.errors import LstmgenError

CHUNK_BYTES = 4 << 20
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}
_ENCODING_ERRORS = ("strict", "replace", "ignore")


def is_path_like(source) -> bool:
    """True when ``source`` names files (a path, or a list/tuple of paths) rather than text."""
    if isinstance(source, (str, os.PathLike)):
        return True
    return isinstance(source, (list, tuple)) and all(
        isinstance(s, (str, os.PathLike)) for s in source
    )


@dataclass(frozen=True)
class TextFile:
    """One file of a corpus; ``explicit`` when the user named it rather than a folder walk."""

    path: Path
    explicit: bool


def resolve_files(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[TextFile]:
    """Expand paths, folders (recursively, hidden entries skipped) and globs into files.

    Example:
        >>> [f.path.name for f in resolve_files(sysconfig.get_paths()["stdlib"] + "/this.py")]
        ['this.py']
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[TextFile] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_file():
            files.append(TextFile(path, explicit=True))
        elif path.is_dir():
            files.extend(TextFile(p, explicit=False) for p in _walk(path))
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            for m in matches:
                if m.is_file():
                    files.append(TextFile(m, explicit=False))
                elif m.is_dir():
                    files.extend(TextFile(p, explicit=False) for p in _walk(m))
            if not matches:
                raise LstmgenError(f"no file matches {text!r}", hint="check the pattern")
        else:
            raise LstmgenError(f"no such file or folder: {text}", hint="check the path")
    if not files:
        raise LstmgenError("the corpus names no files", hint="pass a file, folder or glob")
    return files


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root, n) for n in sorted(names) if not n.startswith("."))
    return found


def _open_binary(path: Path):
    opener = _OPENERS.get(path.suffix.lower())
    try:
        return opener(path, "rb") if opener else open(path, "rb")
    except OSError as e:
        raise LstmgenError(f"cannot read {path}: {e.strerror or e}") from None


def _read_blocks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    with _open_binary(path) as f:
        while True:
            try:
                block = f.read(chunk_bytes)
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise LstmgenError(
                    f"cannot read {path}: {e}", hint="the file is damaged or not what its "
                    "extension says"
                ) from None
            if not block:
                return
            yield block


class _NewlineNormalizer:
    """Turns ``\r\n`` and lone ``\r`` into ``\n`` across chunk boundaries: a chunk ending
    in ``\r`` waits to see whether the next one starts with ``\n``."""

    def __init__(self):
        self.pending_cr = False

    def feed(self, text: str) -> str:
        if self.pending_cr:
            text = "\r" + text
        self.pending_cr = text.endswith("\r")
        if self.pending_cr:
            text = text[:-1]
        if "\r" in text:  # one fast scan; two replace() calls cost ~10x more
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text

    def flush(self) -> str:
        pending, self.pending_cr = self.pending_cr, False
        return "\n" if pending else ""


class BinaryFileError(LstmgenError):
    """A file that holds NUL bytes, so it is not text."""


def iter_file_text(
    path: Path,
    *,
    encoding_errors: str = "strict",
    normalize_newlines: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[str]:
    """Yield the decoded text of one file in chunks of about ``chunk_bytes``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=encoding_errors)
    offset = 0
    first = True
    newlines = _NewlineNormalizer() if normalize_newlines else None
    for block in _read_blocks(path, chunk_bytes):
        nul = block.find(b"\0")
        if nul >= 0:
            raise BinaryFileError(
                f"{path} is not text: NUL byte at offset {offset + nul}",
                hint="pass text files only (UTF-8), or leave this one out",
            )
        try:
            buffered = len(decoder.getstate()[0])
            text = decoder.decode(block)
        except UnicodeDecodeError as e:
            raise LstmgenError(
                f"{path} is not valid UTF-8 at byte offset {offset - buffered + e.start}",
                hint="convert it to UTF-8, or pass --encoding-errors replace",
            ) from None
        offset += len(block)
        if first:
            text = text.removeprefix("\ufeff")
            first = False
        if newlines:
            text = newlines.feed(text)
        if text:
            yield text
    try:
        buffered = len(decoder.getstate()[0])
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise LstmgenError(
            f"{path} ends inside a UTF-8 character (byte offset {offset - buffered})",
            hint="the file is truncated; convert or repair it, or pass --encoding-errors replace",
        ) from None
    if newlines:
        tail = newlines.flush() + tail
    if tail:
        yield tail


def iter_corpus_text(
    source,
    *,
    encoding_errors: str = "strict",
    normalize_newlines: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[str]:
    """Yield the text of a whole corpus as chunks, each ending at a line break where possible.

    ``source`` is a path, folder or glob (or a list of them) — files are read in order and
    joined so that each ends with a newline — or any other iterable of strings, consumed once.
    Files found by walking a folder or a glob that turn out to be binary are skipped with a
    warning; a binary file named explicitly is an error.

    Example:
        >>> chunks = iter_corpus_text(iter(["first line\\r\\n", "second"]))
        >>> "".join(chunks)
        'first line\\nsecond'
    """
    if encoding_errors not in _ENCODING_ERRORS:
        raise LstmgenError(
            f"unknown encoding_errors {encoding_errors!r}",
            hint=f"use one of {', '.join(_ENCODING_ERRORS)}",
        )
    if is_path_like(source):
        pieces = _iter_files(source, encoding_errors, normalize_newlines, chunk_bytes)
    else:
        pieces = _iter_strings(source, normalize_newlines)
    yield from _align_to_lines(pieces, chunk_bytes)


def _iter_files(source, encoding_errors, normalize_newlines, chunk_bytes) -> Iterator[str]:
    skipped = []
    for file in resolve_files(source):
        last = ""
        try:
            for text in iter_file_text(
                file.path,
                encoding_errors=encoding_errors,
                normalize_newlines=normalize_newlines,
                chunk_bytes=chunk_bytes,
            ):
                last = text
                yield text
        except BinaryFileError:
            if file.explicit:
                raise
            skipped.append(file.path)
            continue
        if last and not last.endswith("\n"):
            yield "\n"
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} binary file(s), e.g. {skipped[0]}", stacklevel=3
        )


def _iter_strings(strings: Iterable[str], normalize_newlines: bool) -> Iterator[str]:
    try:
        iterator = iter(strings)
    except TypeError:
        raise LstmgenError(
            f"cannot read a corpus from a {type(strings).__name__}",
            hint="pass a path, a list of paths, or an iterable of strings",
        ) from None
    newlines = _NewlineNormalizer() if normalize_newlines else None
    for text in iterator:
        if isinstance(text, bytes):
            raise LstmgenError(
                "the corpus iterable yielded bytes", hint="decode them to str first"
            )
        if not isinstance(text, str):
            raise LstmgenError(
                f"the corpus iterable yielded a {type(text).__name__}",
                hint="yield str chunks of text",
            )
        if newlines:
            text = newlines.feed(text)
        if text:
            yield text
    if newlines and newlines.flush():
        yield "\n"


def _align_to_lines(pieces: Iterable[str], chunk_bytes: int) -> Iterator[str]:
    """Regroup pieces into chunks of about ``chunk_bytes`` characters ending at a newline,
    so word and subword tokenizers never see a word cut in two."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size < chunk_bytes:
            continue
        text = "".join(buffer)
        cut = text.rfind("\n") + 1
        if cut == 0 and size < 4 * chunk_bytes:
            continue  # a very long line: keep gathering, up to a bound
        if cut == 0:
            cut = len(text)
        yield text[:cut]
        rest = text[cut:]
        buffer, size = ([rest], len(rest)) if rest else ([], 0)
    if buffer:
        text = "".join(buffer)
        if text:
            yield text


def default_corpus() -> list[Path]:
    """The built-in corpus: the Python standard library's own top-level ``.py`` sources,
    which ship with every Python installation (found through ``sysconfig``).

    Example:
        >>> len(default_corpus()) > 50
        True
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise LstmgenError(
            f"no Python sources found in {stdlib}",
            hint="this Python installation ships without its .py files; pass a corpus path",
        )
    return files
