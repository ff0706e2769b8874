"""tools/chunking.py: byte offsets, long lines, overlap, streaming memory."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest
from support import load_tool

ch = load_tool("chunking")

ALPHABET = "abc \n\néü✓€😀日本"


def _write(tmp_path: Path, data: bytes | str, name: str = "f.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _check_no_overlap(raw: bytes, chunks: list, chunk_size: int) -> None:
    """Every byte exactly once, in order; offsets real; newline rule; no character cut."""
    assert chunks[0].start == 0 if raw else chunks == []
    for i, c in enumerate(chunks):
        assert c.index == i
        assert raw[c.start:c.end].decode("utf-8") == c.text  # strict: no split character
        if i:
            assert c.start == chunks[i - 1].end
        assert c.end > c.start
        if chunk_size >= 4:
            assert c.end - c.start <= chunk_size
        window = raw[c.start:c.start + chunk_size]
        if c.end != len(raw) and b"\n" in window:
            assert c.end == c.start + window.rfind(b"\n") + 1  # the last newline in the window
    if raw:
        assert chunks[-1].end == len(raw)


def test_ascii_offsets_and_coverage(tmp_path: Path) -> None:
    text = "".join(f"line {i} " + "x" * (i % 37) + "\n" for i in range(2000))
    path = _write(tmp_path, text)
    raw = path.read_bytes()
    for size in (1, 7, 64, 500, 8000, len(raw), len(raw) + 10):
        chunks = list(ch.chunk_file(path, chunk_size=size))
        _check_no_overlap(raw, chunks, size)
        assert "".join(c.text for c in chunks) == text
        assert [c.text for c in chunks] == ch.chunk_text(text, chunk_size=size)


def test_long_line_is_split(tmp_path: Path) -> None:
    text = "short\n" + "y" * 30_000 + "\nend\n"
    path = _write(tmp_path, text)
    chunks = list(ch.chunk_file(path, chunk_size=8000))
    assert max(c.end - c.start for c in chunks) <= 8000
    assert [c.end - c.start for c in chunks[:4]] == [6, 8000, 8000, 8000]
    assert "".join(c.text for c in chunks) == text
    assert len(ch.chunk_text("z" * 100_000, chunk_size=1000)) == 100


def test_multibyte_offsets_never_split_a_character(tmp_path: Path) -> None:
    rng = random.Random(7)
    text = "".join(rng.choice(ALPHABET) for _ in range(20_000)) + "😀" * 3000  # long line of 4-byte chars
    path = _write(tmp_path, text)
    raw = path.read_bytes()
    for size in (1, 2, 3, 4, 5, 6, 13, 100, 4097):
        chunks = list(ch.chunk_file(path, chunk_size=size))
        _check_no_overlap(raw, chunks, size)
        assert "".join(c.text for c in chunks) == text
        for c in chunks:
            assert ch.read_range(path, c.start, c.end) == c.text


def test_random_texts(tmp_path: Path) -> None:
    rng = random.Random(11)
    for trial in range(60):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 3000)))
        path = _write(tmp_path, text, f"r{trial}.txt")
        size = rng.randint(1, 300)
        _check_no_overlap(path.read_bytes(), list(ch.chunk_file(path, size)), size)


def test_validation_messages(tmp_path: Path) -> None:
    path = _write(tmp_path, "abc\n")
    with pytest.raises(ValueError, match="overlap must be smaller than chunk_size"):
        list(ch.chunk_file(path, chunk_size=100, overlap=100))
    with pytest.raises(ValueError, match="overlap must be smaller"):
        ch.chunk_text("abc", chunk_size=10, overlap=50)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        list(ch.chunk_file(path, chunk_size=0))
    with pytest.raises(ValueError, match="overlap must be 0 or"):
        ch.chunk_text("abc", chunk_size=10, overlap=-1)
    with pytest.raises(ValueError, match="lines_per_chunk must be a positive"):
        list(ch.chunk_lines(path, 0))
    with pytest.raises(ValueError, match="start <= end"):
        ch.read_range(path, 5, 2)


def _check_overlap(raw: bytes, chunks: list, chunk_size: int, overlap: int) -> None:
    assert chunks[0].start == 0 and chunks[-1].end == len(raw)
    for prev, c in zip(chunks, chunks[1:]):
        assert c.start > prev.start  # always advances
        assert c.end > prev.end  # always brings new bytes
        assert c.start <= prev.end  # no gap
        assert c.start >= prev.end - overlap  # never more overlap than asked
        assert raw[c.start:c.end].decode("utf-8") == c.text
        if chunk_size >= 4:
            assert c.end - c.start <= chunk_size


def test_overlap_progress_and_bounds(tmp_path: Path) -> None:
    text = "x" * 10_000
    chunks = list(ch.chunk_file(_write(tmp_path, text), chunk_size=1000, overlap=200))
    assert [c.start for c in chunks[:3]] == [0, 800, 1600]
    assert chunks[-1].end == 10_000
    # a short line then a long one: no run of near-duplicate chunks
    text = "0123456789\n" + "y" * 20_000
    path = _write(tmp_path, text, "g.txt")
    chunks = list(ch.chunk_file(path, chunk_size=8000, overlap=4000))
    _check_overlap(path.read_bytes(), chunks, 8000, 4000)
    assert len(chunks) <= 7
    # the largest overlap allowed, on multibyte text and tiny sizes
    rng = random.Random(3)
    for trial in range(40):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 2000)))
        path = _write(tmp_path, text, f"o{trial}.txt")
        size = rng.randint(1, 200)
        overlap = rng.randint(0, size - 1)
        chunks = list(ch.chunk_file(path, size, overlap))
        _check_overlap(path.read_bytes(), chunks, size, overlap)
        assert [c.text for c in chunks] == ch.chunk_text(text, size, overlap)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, b"")
    assert list(ch.chunk_file(path)) == []
    assert ch.chunk_text("") == []
    assert list(ch.chunk_lines(path, 3)) == []
    assert ch.file_stats(path) == {"bytes": 0, "lines": 0, "longest_line": 0}
    assert ch.preview(path) == ""


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = _write(tmp_path, b"ok\n\xff\xfe bad \x80\x80\x80\x80\n")
    chunks = list(ch.chunk_file(path, chunk_size=3))
    assert chunks[-1].end == path.stat().st_size
    assert all(b.start == a.end for a, b in zip(chunks, chunks[1:]))
    assert "\ufffd" in "".join(c.text for c in chunks)
    # a run of stray continuation bytes is cut at chunk_size, not into tiny pieces
    path = _write(tmp_path, b"\x80" * 100_000, "garbage")
    assert [c.end - c.start for c in ch.chunk_file(path, chunk_size=1000, overlap=100)][:3] == [1000] * 3
    assert len(list(ch.chunk_file(path, chunk_size=1000))) == 100


def test_lines_helpers(tmp_path: Path) -> None:
    text = "a\r\nbé\n\nlast"
    path = _write(tmp_path, text)
    assert list(ch.iter_lines(path)) == [(0, "a"), (3, "bé"), (7, ""), (8, "last")]
    chunks = list(ch.chunk_lines(path, 2))
    assert [(c.start, c.end, c.text) for c in chunks] == [(0, 7, "a\r\nbé\n"), (7, 12, "\nlast")]
    raw = path.read_bytes()
    assert all(raw[c.start:c.end].decode() == c.text for c in chunks)


def test_file_stats(tmp_path: Path) -> None:
    big_line = "q" * (2_500_000)  # crosses several read blocks
    for name, text in [("a", "one\ntwo\nthree\n"), ("b", "no newline at end"), ("c", "\n\n\n"),
                       ("d", "x\n" + big_line + "\nshort\n" + big_line[:10]), ("e", "é✓\n")]:
        path = _write(tmp_path, text, name)
        raw = text.encode()
        lines = raw.split(b"\n")
        if raw.endswith(b"\n"):
            lines.pop()
        expected = {"bytes": len(raw), "lines": len(lines), "longest_line": max(map(len, lines), default=0)}
        assert ch.file_stats(path) == expected, name


def test_preview_and_read_range(tmp_path: Path) -> None:
    small = _write(tmp_path, "tiny file\n", "s")
    assert ch.preview(small) == "tiny file\n"
    text = "é" * 5000 + "MIDDLE" + "✓" * 5000
    path = _write(tmp_path, text, "p")
    out = ch.preview(path, head=101, tail=50)
    head, rest = out.split("\n\n[...", 1)
    assert head == "é" * 50  # 101 bytes, cut back to a character start
    assert rest.endswith("\n\n" + "✓" * 16)  # 50 bytes, cut forward to a character start
    assert "bytes omitted" in rest and "MIDDLE" not in out
    assert ch.read_range(path, 10_000, 10_006) == "MIDDLE"
    assert ch.read_range(path, 0, 10**9) == text


def test_50mb_file_streams_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = ("record value=12345 " * 5 + "é✓\n").encode()
    block = line * ((1 << 20) // len(line) + 1)
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(block)
        f.write(b"z" * 3_000_000)  # and one 3 MB line at the end
    size = path.stat().st_size
    assert size > 50_000_000
    tracemalloc.start()
    try:
        count = covered = last_end = 0
        for c in ch.chunk_file(path, chunk_size=100_000, overlap=1000):
            assert c.start <= last_end
            count += 1
            covered = c.end
            last_end = c.end
        stats = ch.file_stats(path)
        lines = sum(1 for _ in ch.iter_lines(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert covered == size and count > 500
    assert stats["bytes"] == size and stats["longest_line"] == 3_000_000 and lines == stats["lines"]
    assert peak < 12_000_000, peak  # dominated by the 3 MB line in iter_lines, never the file size
