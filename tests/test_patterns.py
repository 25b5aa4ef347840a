"""Exclude patterns mean what they mean in a .gitignore file, in pack, unpack and diff."""

from __future__ import annotations

from pathlib import Path

import pytest

import oxbak
from oxbak.patterns import Excludes, read_patterns
from oxbak.scan import scan_tree
from treeutil import Node, build


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "excluded"),
    [
        ("a/*.txt", b"a/x.txt", False, True),
        ("a/*.txt", b"a/b/c.txt", False, False),  # * stays within one component
        ("a/**/*.txt", b"a/b/c.txt", False, True),
        ("*.log", b"deep/down/x.log", False, True),  # no "/": a name at any depth
        ("/top.log", b"deep/top.log", False, False),  # a leading "/": anchored
        ("./a/b", b"a/b", True, True),  # as people type a path from the root
        ("build/", b"build", True, True),  # a trailing "/": directories only
        ("build/", b"build", False, False),
        ("**/tmp", b"x/y/tmp", True, True),
    ],
)
def test_gitignore_meaning(pattern: str, path: bytes, is_dir: bool, excluded: bool) -> None:
    assert Excludes([pattern]).excluded(path, is_dir) is excluded


def test_a_later_negation_takes_a_match_back() -> None:
    rules = Excludes(["*.log", "!keep.log"])
    assert rules.excluded(b"x.log", False) and not rules.excluded(b"keep.log", False)
    assert rules.unused() == []


def test_unused_patterns_and_the_count() -> None:
    rules = Excludes(["*.tmp", "nothing-here", "# a comment", ""])
    for path in (b"a.tmp", b"b.tmp", b"c.json"):
        rules.excluded(path, False)
    assert rules.count == 2 and rules.unused() == ["nothing-here"]


def test_read_patterns(tmp_path: Path) -> None:
    (tmp_path / "ignore").write_text("# caches\n*.tmp\n\nbuild/\n")
    assert read_patterns(str(tmp_path / "ignore")) == ["*.tmp", "build/"]
    with pytest.raises(oxbak.OxbakError, match="cannot read exclude file"):
        read_patterns(str(tmp_path / "missing"))


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"a": Node(
                "dir",
                children={
                    b"x.txt": Node("file", data=b"x"),
                    b"b": Node("dir", children={b"c.txt": Node("file", data=b"c")}),
                },
            ),
            b"build": Node("dir", children={b"out.o": Node("file", data=b"o")}),
            b"keep.log": Node("file", data=b"k"),
            b"x.log": Node("file", data=b"l"),
        },
    )
    return src


def test_pack_and_unpack_read_patterns_alike(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    patterns = ["a/*.txt", "build/", "*.log", "!keep.log"]
    kept = [e.path for e in scan_tree(src, patterns)]
    assert kept == [b"", b"a", b"a/b", b"a/b/c.txt", b"keep.log"]
    result = oxbak.pack(src, tmp_path / "all.oxbak")
    assert result.excluded == 0
    oxbak.unpack(tmp_path / "all.oxbak", tmp_path / "dest", excludes=patterns)
    restored = sorted(
        str(p.relative_to(tmp_path / "dest")) for p in (tmp_path / "dest").rglob("*")
    )
    assert restored == ["a", "a/b", "a/b/c.txt", "keep.log"]
    packed = oxbak.pack(src, tmp_path / "some.oxbak", excludes=patterns)
    assert packed.excluded == 3  # a/x.txt, build (with what is in it), x.log
