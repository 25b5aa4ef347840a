"""Manifest and index: strict decoding, version gate, forward compatibility."""

from __future__ import annotations

import json

import pytest

from oxbak import format as fmt
from oxbak.errors import CorruptArchiveError, ManifestError, UnsupportedVersionError
from oxbak.manifest import (
    IndexRecord,
    Manifest,
    decode_index_header,
    decode_index_record,
    decode_manifest,
    encode_manifest,
)


def _valid(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "format": "oxbak",
        "version": 1,
        "created_at": "2023-11-14T22:13:20Z",
        "oxbak_version": "1.0.0",
        "source": "state",
        "sections": [{"name": "seeds", "entry_count": 2}],
        "totals": {"files": 2, "hardlinks": 0, "directories": 2, "symlinks": 0, "bytes": 10},
        "compression": {"algorithm": "zstd", "level": 3, "checksum": True},
        "labels": {"k": "v"},
        "skipped": 0,
        "partial": False,
        "changed": 0,
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def test_decodes_valid() -> None:
    m = decode_manifest(_valid())
    assert m.totals.entries == 4 and m.labels == {"k": "v"} and m.sections[0].name == "seeds"


def test_unknown_fields_are_ignored() -> None:
    m = decode_manifest(
        _valid(future_field={"x": 1}, totals={"files": 0, "directories": 1, "bytes": 0, "new": 5})
    )
    assert m.totals.directories == 1


def test_trailing_spaces_are_fine() -> None:
    assert decode_manifest(_valid() + b"\n" + b" " * 600).version == 1


def test_newer_version_is_refused_naming_both() -> None:
    with pytest.raises(
        UnsupportedVersionError,
        match=r"^archive format version 4 is newer than this oxbak supports \(version 3\); upgrade oxbak to read it$",
    ):
        decode_manifest(_valid(version=4, totals="whatever the future holds"))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "malformed"),
        (_valid(version=True), r"Expected `int`, got `bool`"),
        (_valid(version="1"), r"Expected `int`, got `str`"),
        (_valid(version=1.0), r"Expected `int`, got `float`"),
        (_valid(version=0), "invalid format version 0"),
        (_valid(version=-1), "invalid format version -1"),
        (_valid(format="zip"), "declares format 'zip'"),
        (_valid(totals={"files": "2"}), "Expected `int`, got `str`"),
        (_valid(totals={"files": -1, "directories": 1}), "totals.files is negative"),
        (_valid(totals={"directories": 0}), "totals.directories is 0"),
        (_valid(labels={"k": 1}), "Expected `str`, got `int`"),
        (_valid(partial="no"), "Expected `bool | null`"),
        (b'{"format": "oxbak", "version": NaN}', "not valid JSON"),
        (b'{"format": "oxbak"}', "missing required field `version`"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        decode_manifest(data)


def test_huge_version() -> None:
    with pytest.raises(ManifestError):
        decode_manifest(_valid(version=2**64))


def test_encode_pads_to_size() -> None:
    m = decode_manifest(_valid())
    data = encode_manifest(m)
    assert data.endswith(b" " * fmt.MANIFEST_SLACK)
    assert len(encode_manifest(m, size=len(data))) == len(data)
    assert decode_manifest(data) == m
    with pytest.raises(ValueError, match="beyond its"):
        encode_manifest(m, size=10)
    assert isinstance(m, Manifest)


def test_index_records() -> None:
    rec = IndexRecord.for_path(b"caf\xe9", "file", size=3, digest="ab")
    assert rec.path is None and rec.path_b64 == b"caf\xe9" and rec.raw_path == b"caf\xe9"
    assert IndexRecord.for_path(b"ok", "dir").path == "ok"
    line = b'{"path_b64":"Y2Fm6Q==","type":"file","size":3,"digest":"ab"}'
    assert decode_index_record(line, 1).raw_path == b"caf\xe9"
    with pytest.raises(CorruptArchiveError, match="exactly one of path and path_b64"):
        decode_index_record(b'{"type":"file"}', 7)
    with pytest.raises(CorruptArchiveError, match="record 2 is malformed"):
        decode_index_record(b'{"path":"x","type":"fifo"}', 2)
    with pytest.raises(CorruptArchiveError, match="unknown digest"):
        decode_index_header(
            b'{"format":"oxbak-index","version":1,"digest":"md5","entries":0,"partial":false}'
        )
