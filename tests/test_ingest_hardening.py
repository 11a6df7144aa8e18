"""Ingest against hostile inputs: special files, damaged and huge tars, bad limits, bad --out."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
from collections import Counter

import pytest
from PIL import Image
from pydantic import ValidationError

from acedata import shards
from acedata.errors import UserError
from acedata.pipeline import run_stages
from acedata.stages.ingest import IngestConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48 + i, 40), (30 * i % 256, 100, 200)).save(buf, "PNG")
    return buf.getvalue()


def _ingest(sources, out, **kw):
    cfg = IngestConfig(name="ingest", sources=[str(s) for s in sources], **kw)
    return run_stages([cfg], str(out), executor="local")["stages"][0]


def _reasons(out) -> Counter:
    q = shards.read_table(os.path.join(str(out), "ingest", "quarantine"))
    return Counter(q.column("reason").to_pylist())


def _balanced(c: dict) -> bool:
    return c["inputs"] == c["images"] + c["duplicates"] + c["quarantine"]


def _cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    return subprocess.run([sys.executable, "-m", "acedata", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False, cwd=cwd)


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_fifo_and_socket_are_quarantined_not_opened(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(1))
    os.mkfifo(src / "pipe.png")  # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.jpg"))
    signal.alarm(120)  # a regression hangs; fail instead of blocking the suite
    try:
        c = _ingest([src], tmp_path / "run")["counts"]
    finally:
        signal.alarm(0)
        sock.close()
    assert c["images"] == 1 and _balanced(c)
    assert _reasons(tmp_path / "run") == Counter({"not_regular_file": 2})


def _webdataset(path, n: int) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            for ext, data in (("png", _png(i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _header_offsets(path) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {m.name: m.offset for m in tar.getmembers()}


def test_corrupt_member_header_keeps_every_later_member(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tar_path = src / "shard.tar"
    _webdataset(tar_path, 5)
    raw = bytearray(tar_path.read_bytes())
    off = _header_offsets(tar_path)["0001.png"]
    raw[off + 148 : off + 156] = b"9999999\0"  # a checksum that cannot match
    tar_path.write_bytes(bytes(raw))
    c = _ingest([src], tmp_path / "run")["counts"]
    reasons = _reasons(tmp_path / "run")
    # sample 0001 lost its image (its caption alone is no sample); 0000, 0002..0004 all kept
    assert c["images"] == 4 and _balanced(c), c
    assert reasons == Counter({"corrupt_tar_header": 1, "no_image_in_sample": 1}), reasons


def test_truncated_tar_keeps_complete_members(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tar_path = src / "shard.tar"
    _webdataset(tar_path, 5)
    off = _header_offsets(tar_path)["0003.png"]
    tar_path.write_bytes(tar_path.read_bytes()[: off + 512 + 20])  # cut inside 0003.png's data
    c = _ingest([src], tmp_path / "run")["counts"]
    assert c["images"] == 3 and _balanced(c), c
    assert _reasons(tmp_path / "run") == Counter({"truncated_tar": 1})


def test_link_and_device_members_are_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "links.tar", "w") as tar:
        data = _png(2)
        info = tarfile.TarInfo("0000.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, kind in (("0001.png", tarfile.SYMTYPE), ("0002.png", tarfile.LNKTYPE),
                           ("0003.png", tarfile.CHRTYPE), ("0004.png", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "0000.png" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info)
    c = _ingest([src], tmp_path / "run")["counts"]
    assert c["inputs"] == 5 and c["images"] == 1 and _balanced(c), c
    assert _reasons(tmp_path / "run") == Counter({"not_regular_file": 4})


RSS_PROBE = """
import resource, sys
from acedata.pipeline import run_stages
from acedata.stages.ingest import IngestConfig
# Warm up on a small tar first, so modules and buffers loaded on first use are not counted.
run_stages([IngestConfig(name="ingest", sources=[sys.argv[3]])], sys.argv[2] + "-warm", executor="local")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = IngestConfig(name="ingest", sources=[sys.argv[1]])
c = run_stages([cfg], sys.argv[2], executor="local")["stages"][0]["counts"]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024, c["inputs"], c["images"], c["quarantine"])
"""


def test_large_tar_streams_with_bounded_memory(tmp_path):
    """A 256 MB tar of incompressible members: peak RSS grows by far less than the tar."""
    src = tmp_path / "src"
    src.mkdir()
    member, count = 1 << 20, 256
    with tarfile.open(src / "big.tar", "w") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"{i:05d}.jpg")  # random bytes: read, then quarantined as not an image
            info.size = member
            tar.addfile(info, io.BytesIO(os.urandom(member)))
        ok = _png(3)
        info = tarfile.TarInfo("zzzzz.png")
        info.size = len(ok)
        tar.addfile(info, io.BytesIO(ok))
    size = os.path.getsize(src / "big.tar")
    (tmp_path / "small").mkdir()
    _webdataset(tmp_path / "small" / "s.tar", 3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    r = subprocess.run([sys.executable, "-c", RSS_PROBE, str(src), str(tmp_path / "run"), str(tmp_path / "small")], capture_output=True,
                       text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    before, after, inputs, images, quarantined = map(int, r.stdout.split()[-5:])
    assert (inputs, images, quarantined) == (count + 1, 1, count)
    print(f"tar {size >> 20} MB: peak RSS {after >> 20} MB, grew {(after - before) >> 20} MB")
    assert after - before < size / 4, f"peak RSS grew {(after - before) >> 20} MB for a {size >> 20} MB tar"


def test_empty_source_fails_unless_allowed(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        _ingest([tmp_path / "empty"], tmp_path / "run")
    c = _ingest([tmp_path / "empty"], tmp_path / "run2", allow_empty=True)["counts"]
    assert c.get("inputs", 0) == 0


@pytest.mark.parametrize("field", [{"max_pixels": 0}, {"max_aspect": 0}, {"min_side": 0}, {"max_side": 0},
                                   {"max_aspect": 0.5}, {"files_per_unit": 0}])
def test_limits_are_range_checked(field):
    with pytest.raises(ValidationError):
        IngestConfig(name="ingest", sources=["x"], **field)


def test_cli_refuses_bad_limits_bad_out_and_empty_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(0))
    _one_line_error(_cli("ingest", str(src), "--out", str(tmp_path / "r"), "--max-pixels", "0", "--executor", "local"),
                    "--max-pixels", "greater than 0")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\nstages:\n  - stage: ingest\n    sources: [{src}]\n    max_aspect: 0\n")
    r = _cli("run", str(spec), "--out", str(tmp_path / "r2"), "--executor", "local")
    _one_line_error(r, "max_aspect")
    a_file = tmp_path / "taken"
    a_file.write_text("not a directory")
    _one_line_error(_cli("ingest", str(src), "--out", str(a_file), "--executor", "local"), "existing file")
    (tmp_path / "none").mkdir()
    _one_line_error(_cli("ingest", str(tmp_path / "none"), "--out", str(tmp_path / "r3"), "--executor", "local"),
                    "holds no files")


def test_compressed_tar_is_streamed_too(tmp_path):
    import gzip

    src = tmp_path / "src"
    src.mkdir()
    _webdataset(tmp_path / "plain.tar", 3)
    (src / "shard.tar").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    c = _ingest([src], tmp_path / "run")["counts"]
    assert c["images"] == 3 and c["inputs"] == 3, c


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_stream_reads_long_names_and_stops_at_the_end_marker(fmt):
    from acedata import tar_stream

    long_dir = "d" * 90 + "/" + "e" * 60  # > 100 bytes: a pax/GNU extension or the ustar prefix
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, data in enumerate((b"x" * 700, b"", b"y" * 512)):
            info = tarfile.TarInfo(f"{long_dir}/{i:04d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.write(b"junk after the end-of-archive marker")
    buf.seek(0)
    got = list(tar_stream.members(buf, max_bytes=600))
    assert [m.name for m in got] == [f"{long_dir}/{i:04d}.bin" for i in range(3)]
    assert got[0].error[0] == "file_too_large" and got[1].data == b"" and got[2].data == b"y" * 512


def test_a_device_named_as_the_source_is_quarantined(tmp_path):
    signal.alarm(120)
    try:
        c = _ingest(["/dev/zero"], tmp_path / "run")["counts"]  # reading it would never end
    finally:
        signal.alarm(0)
    assert c["inputs"] == 1 and c["quarantine"] == 1
    assert _reasons(tmp_path / "run") == Counter({"not_regular_file": 1})
