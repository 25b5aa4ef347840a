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
    for name in (fmt.MANIFEST_NAME, fmt.INDEX_NAME, fmt.TREE_PREFIX + "/", fmt.DIGEST_NAME):
        assert f"`{name}`" in DOC, name
    assert f"`0x{fmt.SKIPPABLE_MAGIC:08X}`" in DOC
