"""docs/FORMAT.md and format.py state the same contract."""

from __future__ import annotations

import re
from pathlib import Path

from oxbak import format as fmt

DOC = (Path(__file__).parent.parent / "docs" / "FORMAT.md").read_text()


def test_version_line() -> None:
    assert re.search(rf"^Format version: \*\*{fmt.FORMAT_VERSION}\*\*$", DOC, re.M)


def _mib(text: str) -> int:
    number, unit = text.split()
    return int(number) * {"KiB": 1024, "MiB": 1024 * 1024}[unit]


def test_limits_table() -> None:
    rows = dict(re.findall(r"^\| `(MAX_[A-Z_]+)` \| ([^|]+?) \|$", DOC, re.M))
    assert _mib(rows["MAX_WINDOW_SIZE"]) == fmt.MAX_WINDOW_SIZE
    assert _mib(rows["MAX_MANIFEST_BYTES"]) == fmt.MAX_MANIFEST_BYTES
    assert _mib(rows["MAX_PAX_BYTES"]) == fmt.MAX_PAX_BYTES
    assert _mib(rows["MAX_INDEX_LINE_BYTES"]) == fmt.MAX_INDEX_LINE_BYTES
    assert int(rows["MAX_PATH_BYTES"]) == fmt.MAX_PATH_BYTES
    assert int(rows["MAX_NAME_BYTES"]) == fmt.MAX_NAME_BYTES


def test_member_names() -> None:
    for name in (
        fmt.MANIFEST_NAME,
        fmt.INDEX_NAME,
        fmt.TOC_NAME,
        fmt.TREE_PREFIX + "/",
        fmt.DIGEST_NAME,
        fmt.TOC_FORMAT_NAME,
        fmt.FOOTER_FORMAT_NAME,
    ):
        assert f"`{name}`" in DOC or f'"{name}"' in DOC, name
    for magic in (fmt.SKIPPABLE_MAGIC, fmt.FOOTER_MAGIC, fmt.SEEK_TABLE_MAGIC, fmt.SEEKABLE_MAGIC):
        assert f"`0x{magic:08X}`" in DOC, hex(magic)


def test_frame_cuts_and_blocks() -> None:
    assert f"`FRAME_TARGET` ({fmt.FRAME_TARGET // 1024 // 1024} MiB)" in DOC
    assert f"`FRAME_SPLIT` ({fmt.FRAME_SPLIT // 1024 // 1024} MiB)" in DOC
    assert f"`TOC_BLOCK_ENTRIES` = {fmt.TOC_BLOCK_ENTRIES}" in DOC


def test_new_limits() -> None:
    rows = dict(re.findall(r"^\| `(MAX_[A-Z_]+)` \| ([^|]+?) \|$", DOC, re.M))
    assert _mib(rows["MAX_FRAME_BYTES"]) == fmt.MAX_FRAME_BYTES
    assert _mib(rows["MAX_FOOTER_BYTES"]) == fmt.MAX_FOOTER_BYTES
    assert _mib(rows["MAX_TOC_HEADER_BYTES"]) == fmt.MAX_TOC_HEADER_BYTES
    assert _mib(rows["MAX_TOC_BLOCK_BYTES"]) == fmt.MAX_TOC_BLOCK_BYTES
    assert int(rows["MAX_FRAMES"]) == fmt.MAX_FRAMES


def test_xattr_limits() -> None:
    rows = dict(re.findall(r"^\| `(MAX_[A-Z_]+)` \| ([^|]+?) \|$", DOC, re.M))
    assert int(rows["MAX_XATTR_NAME_BYTES"]) == fmt.MAX_XATTR_NAME_BYTES
    assert _mib(rows["MAX_XATTR_BYTES"]) == fmt.MAX_XATTR_BYTES
    assert f"`MAX_XATTR_NAME_BYTES`\n  ({fmt.MAX_XATTR_NAME_BYTES})" in DOC
    assert f"`MAX_XATTR_BYTES` ({fmt.MAX_XATTR_BYTES // 1024} KiB)" in DOC
