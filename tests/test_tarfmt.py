"""Header encoding and strict decoding, cross-checked against Python's tarfile."""

from __future__ import annotations

import io
import tarfile
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oxbak import tarfmt
from oxbak.errors import CorruptArchiveError, LimitExceededError, UnsafeArchiveError
from strategies import mtimes, names


def _read_back(blocks: bytes) -> tarfmt.Header:
    pax = None
    pos = 0
    while True:
        block = blocks[pos : pos + 512]
        header = tarfmt.parse_header(block, pax)
        pos += 512
        if header.typeflag != tarfmt.PAX:
            return header
        data = blocks[pos : pos + header.size]
        pos += header.size + tarfmt.padding(header.size)
        pax = tarfmt.decode_pax(data, header.name)


@given(
    st.lists(names, min_size=1, max_size=3).map(lambda p: b"tree/" + b"/".join(p)),
    st.integers(0, 2**40),
    mtimes,
    st.sampled_from([0o644, 0o755, 0o4755, 0o1777]),
    st.integers(0, 2**24),
    st.one_of(st.just(b""), names),
)
def test_encode_then_parse(
    name: bytes, size: int, mtime_ns: int, mode: int, uid: int, link: bytes
) -> None:
    blocks = tarfmt.encode_header(
        name,
        typeflag=tarfmt.SYMLINK,
        mode=mode,
        size=size,
        mtime_ns=mtime_ns,
        uid=uid,
        gid=uid,
        linkname=link,
    )
    header = _read_back(blocks)
    assert (
        header.name,
        header.size,
        header.mtime_ns,
        header.mode,
        header.uid,
        header.gid,
        header.linkname,
    ) == (name, size, mtime_ns, mode, uid, uid, link)


@given(
    st.lists(names, min_size=1, max_size=3).map(lambda p: b"tree/" + b"/".join(p)),
    mtimes,
    st.integers(0, 5000),
)
def test_tarfile_agrees(name: bytes, mtime_ns: int, size: int) -> None:
    data = bytes(size)
    stream = (
        tarfmt.encode_header(
            name, typeflag=tarfmt.REGULAR, mode=0o640, size=size, mtime_ns=mtime_ns
        )
        + data
        + bytes(tarfmt.padding(size))
        + bytes(1024)
    )
    with tarfile.open(
        fileobj=io.BytesIO(stream), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tf:
        (member,) = tf.getmembers()
    assert member.name.encode("utf-8", "surrogateescape") == name
    assert member.size == size and member.mode == 0o640
    # tarfile keeps mtime as a float; the exact value is in the pax record.
    exact = Decimal(member.pax_headers.get("mtime", str(int(member.mtime))))
    assert int(exact * 1_000_000_000) == mtime_ns


def test_negative_and_huge_values() -> None:
    blocks = tarfmt.encode_header(
        b"tree/x", typeflag=tarfmt.REGULAR, mode=0o644, size=9 * 2**30, mtime_ns=-1_500_000_000
    )
    header = _read_back(blocks)
    assert header.size == 9 * 2**30 and header.mtime_ns == -1_500_000_000


def test_checksum_is_verified() -> None:
    block = bytearray(tarfmt.encode_header(b"tree/x", typeflag=tarfmt.REGULAR, mode=0o644))
    block[0] ^= 1
    with pytest.raises(CorruptArchiveError, match="checksum mismatch"):
        tarfmt.parse_header(bytes(block), None)


def test_not_ustar() -> None:
    block = bytearray(tarfmt.encode_header(b"tree/x", typeflag=tarfmt.REGULAR, mode=0o644))
    block[257:265] = b"ustar  \0"
    checksum = sum(block[:148]) + sum(block[156:]) + 256
    block[148:156] = b"%06o\0 " % checksum
    with pytest.raises(CorruptArchiveError, match="not a POSIX ustar header"):
        tarfmt.parse_header(bytes(block), None)


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        (b"3", "character device"),
        (b"4", "block device"),
        (b"6", "FIFO"),
        (b"L", "GNU long name"),
        (b"S", "GNU sparse file"),
        (b"g", "global pax header"),
    ],
)
def test_refused_types(flag: bytes, what: str) -> None:
    block = tarfmt.encode_header(b"tree/x", typeflag=flag, mode=0o644)
    with pytest.raises(UnsafeArchiveError, match=f"^refusing member 'tree/x': {what} not allowed$"):
        tarfmt.parse_header(block, None)


def test_pax_records() -> None:
    assert tarfmt.decode_pax(b"12 path=abc\n", b"x") == {b"path": b"abc"}
    with pytest.raises(CorruptArchiveError, match="malformed"):
        tarfmt.decode_pax(b"99 path=abc\n", b"x")
    with pytest.raises(UnsafeArchiveError, match="unsupported pax key 'GNU.sparse.map'"):
        tarfmt.decode_pax(b"22 GNU.sparse.map=0,1\n", b"x")
    with pytest.raises(LimitExceededError):
        tarfmt.check_pax_size(10**6, b"x")
    assert tarfmt.decode_pax(b"13 atime=1.5\n", b"x") == {}


@given(
    st.lists(names, min_size=1, max_size=3).map(lambda p: b"tree/" + b"/".join(p)),
    st.integers(0, 2**40),
    st.one_of(mtimes, st.integers(-(2**40), 2**70)),
    st.integers(0, 0o7777),
    st.integers(0, 2**24),
)
def test_file_header_fast_path_equals_general_encoder(
    name: bytes, size: int, mtime_ns: int, mode: int, uid: int
) -> None:
    general = tarfmt.encode_header(
        name, typeflag=tarfmt.REGULAR, mode=mode, size=size, mtime_ns=mtime_ns, uid=uid, gid=uid
    )
    assert tarfmt.file_header(name, mode, size, mtime_ns, uid, uid) == general


@given(st.binary(min_size=512, max_size=512) | st.sampled_from([b"\xff" * 512, bytes(512)]))
def test_checksum_is_the_plain_byte_sum(block: bytes) -> None:
    # _checksum takes a C shortcut (adler32's low half); it must equal the definition.
    assert tarfmt._checksum(block) == sum(block) - sum(block[148:156]) + 8 * 0x20
