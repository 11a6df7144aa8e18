"""Read a tar archive member by member from a stream, surviving damage.

`tarfile` stops at the first bad header (so every later member is silently lost) and
cannot hand over the members it read before a truncation. This reader parses the
512-byte ustar/GNU/pax headers itself:

- a header whose checksum fails is reported, and the reader scans forward block by
  block to the next header with a valid checksum and the `ustar` magic, then goes on;
- a member cut short by the end of the stream is reported; every complete member before
  it has already been yielded;
- links, devices, fifos are reported as such (never read), directories are skipped;
- only one member's bytes are in memory at a time, and oversized members are skipped
  without being held.

gzip/bz2/xz-compressed archives are decompressed as a stream too.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")
SKIPPED = (b"5", b"g")  # directories, pax global headers: nothing to ingest
LINK_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
              b"6": "fifo"}


@dataclass
class Member:
    name: str
    data: bytes | None = None  # set for a complete regular member within the size limit
    error: tuple[str, str] | None = None  # (reason, detail) otherwise
    size: int = 0


def open_decompressed(raw: BinaryIO) -> BinaryIO:
    """Wrap `raw` in a streaming decompressor when its first bytes say it is compressed."""
    head = raw.read(6)
    rest = _Prefixed(head, raw)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=rest)  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(rest)  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(rest)  # type: ignore[return-value]
    return rest  # type: ignore[return-value]


class _Prefixed:
    """A read-only stream: `head` bytes already read, then the rest of `raw`."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n < 0:
            out, self.head = self.head + self.raw.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        if len(out) < n:
            out += self.raw.read(n - len(out))
        return out

    def readable(self) -> bool:
        return True


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = f.read(min(n - got, 1 << 20))
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _skip(f: BinaryIO, n: int) -> int:
    """Read and drop `n` bytes in bounded chunks; returns how many were there."""
    got = 0
    while got < n:
        b = f.read(min(n - got, 1 << 20))
        if not b:
            break
        got += len(b)
    return got


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values too large for octal
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _valid(block: bytes, need_magic: bool = False) -> bool:
    if len(block) != BLOCK or block == b"\0" * BLOCK:
        return False
    if need_magic and block[257:262] != b"ustar":
        return False
    try:
        stored = _octal(block[148:156])
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return stored in (unsigned, signed)


def _name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        record = data[sp + 1 : pos + length - 1]  # drop the trailing newline
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def _resync(f: BinaryIO, offset: int) -> tuple[bytes | None, int]:
    """After a bad header at `offset`: the next block that is a valid ustar header (None when the
    stream ends first) and that block's offset."""
    offset += BLOCK
    while True:
        block = _read_exact(f, BLOCK)
        if len(block) < BLOCK:
            return None, offset
        if _valid(block, need_magic=True):
            return block, offset
        offset += BLOCK


def _not_regular(name: str, kind: bytes) -> Member:
    if kind in LINK_KINDS:
        return Member(name, error=("not_regular_file", f"tar member is a {LINK_KINDS[kind]}; never read"))
    return Member(name, error=("not_regular_file", f"tar member of type {kind!r}"))


def _regular(f: BinaryIO, name: str, size: int, padded: int, max_bytes: int) -> tuple[Member, int]:
    """A regular file's member (its data, or why not: too large, cut short) and the bytes consumed."""
    if size > max_bytes:
        got = _skip(f, padded)
        if got < size:
            return Member(name, error=("truncated_tar", f"member cut short: {got} of {size} bytes"), size=size), got
        return Member(name, error=("file_too_large", f"{size} bytes > {max_bytes}"), size=size), got
    data = _read_exact(f, size)
    if len(data) < size:
        return Member(name, error=("truncated_tar", f"member cut short: {len(data)} of {size} bytes"),
                      size=size), len(data)
    return Member(name, data=data, size=size), len(data) + _skip(f, padded - size)


def members(f: BinaryIO, max_bytes: int) -> Iterator[Member]:
    """Yield every member of the tar on stream `f` (already decompressed)."""
    offset = 0
    pending: dict[str, str] = {}  # pax / GNU long-name overrides for the next member
    zeros = 0
    while True:
        block = _read_exact(f, BLOCK)
        if not block:
            return
        if len(block) < BLOCK:
            if block.strip(b"\0"):
                yield Member(f"@{offset}", error=("truncated_tar", f"archive ends inside a header at byte {offset}"))
            return
        if block == b"\0" * BLOCK:
            zeros += 1
            offset += BLOCK
            if zeros == 2:
                return  # end-of-archive marker
            continue
        zeros = 0
        if not _valid(block):
            start = offset
            found, offset = _resync(f, offset)
            if found is None:
                yield Member(f"@{start}", error=("corrupt_tar_header",
                                                 f"bad header at byte {start}; no valid header after it"))
                return
            block = found
            yield Member(f"@{start}", error=("corrupt_tar_header",
                                             f"bad header at byte {start}; skipped {offset - start} bytes"))
            pending = {}
        offset += BLOCK
        kind = block[156:157]
        size = _octal(block[124:136])
        padded = -(-size // BLOCK) * BLOCK
        name = pending.pop("path", None) or _name(block)
        if "size" in pending:
            size = int(pending.pop("size"))
            padded = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"L", b"K"):  # metadata for the next member
            meta = _read_exact(f, padded)[:size]
            offset += padded
            if len(meta) < size:
                yield Member(name, error=("truncated_tar", f"archive ends inside a header extension at {offset}"))
                return
            if kind == b"x":
                pending.update(_pax(meta))
            elif kind == b"L":
                pending["path"] = meta.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        pending.clear()
        if kind in SKIPPED or kind not in REGULAR:
            offset += _skip(f, padded)
            if kind not in SKIPPED:
                yield _not_regular(name, kind)
            continue
        member, read = _regular(f, name, size, padded, max_bytes)
        offset += read
        yield member
        if member.error and member.error[0] == "truncated_tar":
            return
