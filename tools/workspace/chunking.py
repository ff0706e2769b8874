"""Split big files into pieces for subcalls, without ever loading them whole.

Every size and offset here is in BYTES of the file (UTF-8), so ``Chunk.start`` and
``Chunk.end`` can be stored in artifacts and read back later with ``read_range``.
Files are streamed in blocks: memory stays flat however large the input is.

    from chunking import chunk_file, file_stats, preview

    print(file_stats("input/prompt.md"))        # {'bytes': ..., 'lines': ..., 'longest_line': ...}
    for c in chunk_file("input/prompt.md", chunk_size=20_000):
        ...  # c.index, c.start, c.end, c.text

Rules of ``chunk_file`` / ``chunk_text``:

* a chunk is at most ``chunk_size`` bytes and ends just after the last newline in
  its window; a line longer than ``chunk_size`` is split at ``chunk_size`` (moved
  back to a UTF-8 character boundary, so no character is ever cut in two);
* without overlap, the chunks cover every byte exactly once, in order;
* with ``overlap``, each chunk starts ``overlap`` bytes before the previous one
  ended (moved to a character boundary), always at least 1 byte further than the
  previous start, and always reaches past the previous end;
* ``overlap >= chunk_size`` is refused with ValueError.

Standard library only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Union

__all__ = ["Chunk", "chunk_file", "chunk_text", "chunk_lines", "iter_lines", "file_stats",
           "preview", "read_range"]

PathLike = Union[str, "os.PathLike[str]"]
_BLOCK = 1 << 20  # bytes read per block


@dataclass(frozen=True)
class Chunk:
    """One piece of a file: bytes ``start`` (inclusive) to ``end`` (exclusive).

    ``text`` is those bytes decoded as UTF-8 (invalid bytes become U+FFFD).
    """

    index: int
    start: int
    end: int
    text: str


def _check_sizes(chunk_size: int, overlap: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of bytes, e.g. chunk_size=8000 (got {chunk_size!r})")
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be 0 or a positive number of bytes, e.g. overlap=200 (got {overlap!r})")
    if overlap >= chunk_size:
        raise ValueError(f"overlap must be smaller than chunk_size (got overlap={overlap}, "
                         f"chunk_size={chunk_size}); pass e.g. overlap={chunk_size // 10}")


def _is_cont(byte: int) -> bool:
    """True for a UTF-8 continuation byte (0b10xxxxxx): not a character start."""
    return byte & 0xC0 == 0x80


def _char_len(lead: int) -> int:
    """Bytes in the UTF-8 character starting with byte ``lead`` (1 for invalid bytes)."""
    return 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1


def _spans(read: Callable[[int], bytes], chunk_size: int, overlap: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(start, chunk_bytes)`` for a byte stream, following the module's rules.

    ``buf`` always starts at the next chunk's start ``pos``; indices below are local to it.
    """
    buf = bytearray()
    pos = 0  # stream offset of the next chunk (and of buf[0])
    prev_end = 0  # stream offset where the previous chunk ended
    eof = False
    block = max(_BLOCK, chunk_size + 4)
    while True:
        while not eof and len(buf) < chunk_size + 4:  # window + room to find a character start
            data = read(block)
            if data:
                buf += data
            else:
                eof = True
        avail = len(buf)
        if avail == 0:
            return
        lo = max(prev_end - pos, 0) + 1  # the chunk must reach past the previous end
        if eof and avail <= chunk_size:
            end = avail
        else:
            nl = buf.rfind(b"\n", lo - 1, chunk_size)
            if nl >= 0:
                end = nl + 1
            else:  # no usable newline: split at chunk_size, on a character start
                end = chunk_size
                while end > max(lo, chunk_size - 3) and _is_cont(buf[end]):
                    end -= 1
                if _is_cont(buf[end]):  # invalid UTF-8, or chunk_size below one character
                    end = chunk_size
                    while chunk_size < 4 and end < min(avail, chunk_size + 3) and _is_cont(buf[end]):
                        end += 1
                    if end < avail and _is_cont(buf[end]):
                        end = chunk_size
        yield pos, bytes(buf[:end])
        if eof and end == avail:
            return
        prev_end = pos + end
        step = end
        if overlap:  # keep room for the next character within chunk_size
            step = min(end, max(end - overlap, 1, end + _char_len(buf[end]) - chunk_size))
            while step < end and _is_cont(buf[step]):
                step += 1
        del buf[:step]
        pos += step


def chunk_file(path: PathLike, chunk_size: int = 8000, overlap: int = 0) -> Iterator[Chunk]:
    """Stream ``path`` as chunks of at most ``chunk_size`` bytes (see the module rules).

    Prefer a size that fits the subcall model comfortably (e.g. 20_000–100_000 bytes).
    ``read_range(path, c.start, c.end) == c.text`` for every chunk of a UTF-8 file.
    """
    _check_sizes(chunk_size, overlap)
    with open(path, "rb") as f:
        for index, (start, data) in enumerate(_spans(f.read, chunk_size, overlap)):
            yield Chunk(index, start, start + len(data), data.decode("utf-8", errors="replace"))


def chunk_text(text: str, chunk_size: int = 8000, overlap: int = 0) -> list[str]:
    """Split a string by the same rules as ``chunk_file``, sizes measured on its UTF-8 bytes."""
    _check_sizes(chunk_size, overlap)
    data = io.BytesIO(text.encode("utf-8", errors="surrogatepass"))
    return [piece.decode("utf-8", errors="replace") for _, piece in _spans(data.read, chunk_size, overlap)]


def iter_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(byte_offset, line)`` for every line, without its ``\\n`` (or ``\\r\\n``)."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            yield offset, line.decode("utf-8", errors="replace")
            offset += len(raw)


def chunk_lines(path: PathLike, lines_per_chunk: int) -> Iterator[Chunk]:
    """Stream ``path`` as chunks of ``lines_per_chunk`` whole lines (newlines kept).

    Good for record-per-line inputs. A chunk holds its lines whole, however long:
    use ``chunk_file`` when lines can be huge.
    """
    if not isinstance(lines_per_chunk, int) or lines_per_chunk <= 0:
        raise ValueError(f"lines_per_chunk must be a positive number of lines, e.g. lines_per_chunk=100 "
                         f"(got {lines_per_chunk!r})")
    index = start = 0
    group: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
        for raw in f:
            group.append(raw)
            size += len(raw)
            if len(group) == lines_per_chunk:
                yield Chunk(index, start, start + size, b"".join(group).decode("utf-8", errors="replace"))
                index, start, group, size = index + 1, start + size, [], 0
    if group:
        yield Chunk(index, start, start + size, b"".join(group).decode("utf-8", errors="replace"))


def file_stats(path: PathLike) -> dict[str, int]:
    """Size facts, streamed: ``bytes``, ``lines`` and ``longest_line`` (bytes, newline excluded).

    A last line without a trailing newline still counts as a line.
    """
    total = lines = longest = 0
    current = 0  # length of the line being read across blocks
    last = b""
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            total += len(block)
            last = block[-1:]
            parts = block.split(b"\n")
            if len(parts) == 1:
                current += len(block)
                continue
            lines += len(parts) - 1
            longest = max(longest, current + len(parts[0]), max(map(len, parts[1:-1]), default=0))
            current = len(parts[-1])
    if total and last != b"\n":
        lines += 1
    longest = max(longest, current)
    return {"bytes": total, "lines": lines, "longest_line": longest}


def _boundary(data: bytes, i: int) -> int:
    """Move index ``i`` back to the start of the UTF-8 character it falls in."""
    while 0 < i < len(data) and _is_cont(data[i]):
        i -= 1
    return i


def preview(path: PathLike, head: int = 2000, tail: int = 1000) -> str:
    """The first ``head`` and last ``tail`` bytes, with a marker saying how much is left out.

    Returns the whole file when it is no longer than ``head + tail`` bytes.
    """
    if head < 0 or tail < 0:
        raise ValueError(f"head and tail must be 0 or more bytes, e.g. head=2000, tail=1000 (got {head}, {tail})")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= head + tail:
            return f.read().decode("utf-8", errors="replace")
        first = f.read(head + 4)
        h = _boundary(first, head)
        f.seek(max(0, size - tail - 4))
        last = f.read()
    t = len(last) - tail
    while 0 < t < len(last) and _is_cont(last[t]):
        t += 1
    tail_start = size - (len(last) - t)
    return (first[:h].decode("utf-8", errors="replace")
            + f"\n\n[... {tail_start - h:,} bytes omitted (bytes {h:,} to {tail_start:,} of {size:,}) ...]\n\n"
            + last[t:].decode("utf-8", errors="replace"))


def read_range(path: PathLike, start: int, end: int) -> str:
    """Bytes ``start`` to ``end`` (exclusive) of ``path`` decoded as UTF-8 (e.g. a Chunk's span).

    ``end`` past the end of the file just stops there.
    """
    if start < 0 or end < start:
        raise ValueError(f"need 0 <= start <= end, e.g. read_range(path, c.start, c.end) (got {start}, {end})")
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start).decode("utf-8", errors="replace")
