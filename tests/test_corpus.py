import bz2
import gzip
import lzma

import pytest

from lstmgen.corpus import default_corpus, iter_corpus_text, resolve_files
from lstmgen.errors import LstmgenError


def read_all(source, **kw):
    return "".join(iter_corpus_text(source, **kw))


def test_compressed_files_read_like_plain(tmp_path, small_text):
    text = small_text.read_text(encoding="utf-8")
    text = text[: text.rfind("\n") + 1]
    for suffix, opener in ((".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)):
        path = tmp_path / f"c{suffix}"
        with opener(path, "wb") as f:
            f.write(text.encode())
        assert read_all(path) == text


def test_folder_walk_is_recursive_sorted_and_skips_hidden_and_binary(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("two\n")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / ".hidden.txt").write_text("secret\n")
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\0\0\0")
    with pytest.warns(UserWarning, match="skipped 1 binary"):
        assert read_all(tmp_path) == "one\ntwo\n"


def test_missing_final_newline_is_added_between_files(tmp_path):
    (tmp_path / "a.txt").write_text("no newline")
    (tmp_path / "b.txt").write_text("next")
    assert read_all([tmp_path / "a.txt", tmp_path / "b.txt"]) == "no newline\nnext\n"


def test_glob(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.md"):
        (tmp_path / name).write_text(name + "\n")
    assert read_all(str(tmp_path / "x*.txt")) == "x1.txt\nx2.txt\n"


def test_bom_dropped_and_newlines_normalised(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes("\ufeffline one\r\nline two\rthree\r\n".encode())
    assert read_all(path) == "line one\nline two\nthree\n"
    assert read_all(path, normalize_newlines=False) == "line one\r\nline two\rthree\r\n"


def test_crlf_split_across_chunks(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes(b"ab\r\ncd\r\n" * 100)
    assert read_all(path, chunk_bytes=3) == "ab\ncd\n" * 100


def test_multibyte_characters_split_across_chunks(tmp_path):
    text = "Grüße, 红楼梦 — ok\n" * 50
    path = tmp_path / "u.txt"
    path.write_text(text, encoding="utf-8")
    assert read_all(path, chunk_bytes=5) == text


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world\n")
    with pytest.raises(LstmgenError, match=r"bad.txt is not valid UTF-8 at byte offset 6"):
        read_all(path)
    assert read_all(path, encoding_errors="replace") == "hello \ufffd world\n"


def test_invalid_utf8_offset_in_later_chunk(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a" * 10 + "é".encode() + b"b" * 5 + b"\xc3(")
    with pytest.raises(LstmgenError, match="byte offset 17"):
        read_all(path, chunk_bytes=4)


def test_explicit_binary_file_is_an_error(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc\0def")
    with pytest.raises(LstmgenError, match="not text: NUL byte at offset 3"):
        read_all(path)


def test_missing_path_and_empty_glob(tmp_path):
    with pytest.raises(LstmgenError, match="no such file or folder"):
        resolve_files(tmp_path / "nope.txt")
    with pytest.raises(LstmgenError, match="no file matches"):
        resolve_files(str(tmp_path / "*.nothing"))


def test_iterable_of_strings_is_consumed_once():
    consumed = []

    def lines():
        for i in range(3):
            consumed.append(i)
            yield f"line {i}\r\n"

    assert read_all(lines()) == "line 0\nline 1\nline 2\n"
    assert consumed == [0, 1, 2]


def test_iterable_of_bytes_is_an_error():
    with pytest.raises(LstmgenError, match="yielded bytes"):
        read_all(iter([b"abc"]))


def test_chunks_end_at_line_breaks(shakespeare):
    chunks = list(iter_corpus_text(shakespeare, chunk_bytes=10_000))
    assert len(chunks) > 50
    assert all(c.endswith("\n") for c in chunks)
    assert "".join(chunks) == shakespeare.read_text(encoding="utf-8")


def test_default_corpus_is_python_sources():
    files = default_corpus()
    assert all(f.suffix == ".py" for f in files)
    assert any(f.name == "os.py" for f in files)
