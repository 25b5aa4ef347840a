"""unpack(): modes, commit semantics, restored metadata, destination checks, recovery."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import oxbak
from oxbak import staging as staging_module
from oxbak.commit import OLD_PREFIX, STAGE_PREFIX
from oxbak.staging import StagingDir
from treeutil import Node, build, snapshot

NEW = {
    b"seeds": Node(
        "dir",
        children={b"a.json": Node("file", data=b"new-a"), b"b.json": Node("file", data=b"new-b")},
    ),
    b"suid": Node("file", data=b"#!/bin/sh\n", mode=0o4755),
    b"sgid": Node("file", data=b"x", mode=0o2750),
    b"link": Node("symlink", target=b"seeds/a.json"),
}
OLD = {
    b"seeds": Node(
        "dir",
        children={b"a.json": Node("file", data=b"old-a"), b"old.json": Node("file", data=b"old")},
    ),
    b"keep": Node("file", data=b"keep me"),
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    build(str(tmp_path / "new"), NEW)
    path = tmp_path / "new.oxbak"
    oxbak.pack(tmp_path / "new", path)
    return path


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith((STAGE_PREFIX, OLD_PREFIX))]


def test_setuid_and_setgid_are_dropped(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    oxbak.unpack(archive, dest)
    assert stat.S_IMODE(os.lstat(dest / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(dest / "sgid").st_mode) == 0o750


def test_new_requires_absent_or_empty(archive: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    oxbak.unpack(archive, empty)
    assert (empty / "seeds" / "a.json").read_bytes() == b"new-a"
    build(str(tmp_path / "old"), OLD)
    before = snapshot(str(tmp_path / "old"))
    with pytest.raises(
        oxbak.DestinationError,
        match=r"old' : ?it is not empty \(use --replace or --merge\)$|it is not empty \(use --replace or --merge\)$",
    ):
        oxbak.unpack(archive, tmp_path / "old")
    assert snapshot(str(tmp_path / "old")) == before
    assert _leftovers(tmp_path) == []


def test_replace_swaps_whole_trees(archive: Path, tmp_path: Path) -> None:
    build(str(tmp_path / "old"), OLD)
    oxbak.unpack(archive, tmp_path / "old", mode="replace")
    got = snapshot(str(tmp_path / "old"))
    assert b"keep" not in got and b"seeds/old.json" not in got
    assert (tmp_path / "old" / "seeds" / "a.json").read_bytes() == b"new-a"
    assert _leftovers(tmp_path) == []


def test_merge_overlays(archive: Path, tmp_path: Path) -> None:
    build(str(tmp_path / "old"), OLD)
    oxbak.unpack(archive, tmp_path / "old", mode="merge")
    root = tmp_path / "old"
    assert (root / "keep").read_bytes() == b"keep me"
    assert (root / "seeds" / "old.json").read_bytes() == b"old"
    assert (root / "seeds" / "a.json").read_bytes() == b"new-a"
    assert (root / "seeds" / "b.json").read_bytes() == b"new-b"
    assert os.readlink(root / "link") == b"seeds/a.json".decode()
    assert _leftovers(tmp_path) == []


def test_merge_refuses_type_conflicts_before_touching_anything(
    archive: Path, tmp_path: Path
) -> None:
    build(
        str(tmp_path / "old"),
        {b"seeds": Node("file", data=b"a file where the archive has a dir"), b"keep": Node("file")},
    )
    before = snapshot(str(tmp_path / "old"))
    with pytest.raises(
        oxbak.DestinationError,
        match=r"^cannot merge 'seeds': DEST has a non-directory there, the archive a dir$",
    ):
        oxbak.unpack(archive, tmp_path / "old", mode="merge")
    assert snapshot(str(tmp_path / "old")) == before
    assert _leftovers(tmp_path) == []


def test_merge_never_writes_through_a_symlink_in_dest(archive: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    build(str(tmp_path / "old"), {b"seeds": Node("symlink", target=str(outside).encode())})
    with pytest.raises(oxbak.DestinationError, match="cannot merge 'seeds'"):
        oxbak.unpack(archive, tmp_path / "old", mode="merge")
    assert list(outside.iterdir()) == []


def test_dest_that_is_a_file_or_symlink(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(oxbak.DestinationError, match="exists and is not a directory$"):
        oxbak.unpack(archive, tmp_path / "f", mode="replace")
    (tmp_path / "real").mkdir()
    (tmp_path / "sym").symlink_to(tmp_path / "real")
    with pytest.raises(oxbak.DestinationError, match="it is a symlink$"):
        oxbak.unpack(archive, tmp_path / "sym", mode="replace")
    with pytest.raises(oxbak.DestinationError, match="is not a directory$"):
        oxbak.unpack(archive, tmp_path / "missing" / "dest")


def test_recover_cleans_leftovers(tmp_path: Path) -> None:
    dest = tmp_path / "state"
    stale = tmp_path / f"{STAGE_PREFIX}state.abc"
    stale.mkdir()
    (stale / "half").write_text("x")
    aside = tmp_path / f"{OLD_PREFIX}state.def"
    aside.mkdir()
    (aside / "old").write_text("the old tree")
    actions = oxbak.recover(dest)
    assert (dest / "old").read_text() == "the old tree"
    assert not stale.exists()
    assert len(actions) == 2


def test_recover_leaves_a_live_staging_dir_alone(tmp_path: Path) -> None:
    import fcntl

    live = tmp_path / f"{STAGE_PREFIX}state.live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert oxbak.recover(tmp_path / "state") == []
        assert live.exists()
    finally:
        os.close(fd)


def test_archive_from_a_file_object(archive: Path, tmp_path: Path) -> None:
    with open(archive, "rb") as fh:
        result = oxbak.unpack(fh, tmp_path / "d")
    assert result.entries == 7 and result.bytes == len(b"new-anew-b#!/bin/sh\nx")


def test_not_enough_space(archive: Path, tmp_path: Path) -> None:
    # A real small filesystem needs root and a mount; the check itself is exercised by
    # claiming more bytes than any disk has, in a hand-made manifest (tests/test_hostile.py
    # builds those); here: the manifest of a normal archive passes it.
    result = oxbak.unpack(archive, tmp_path / "d")
    assert result.manifest.totals.bytes == result.bytes


def test_staging_flushes_in_the_background_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step of 64 KiB (the real one is 32 MiB) so a small tree crosses it many times.
    monkeypatch.setattr(staging_module, "BACKGROUND_SYNC_STEP", 64 * 1024)
    staging = StagingDir(tmp_path / "direct", mode="new", same_owner=False)
    try:
        staging.directory(b"", 0o755, 0, 0, 0)
        for i in range(40):
            staging.file(b"f%02d" % i, 0o644, 10**18, 0, 0, [memoryview(b"x" * 4096)])
        assert staging._flusher is not None  # the first kick happened after 8 files
        staging.finish()
        assert staging.commit() == []
    except BaseException:
        staging.abort()
        raise
    assert sorted(os.listdir(tmp_path / "direct")) == [f"f{i:02d}" for i in range(40)]

    # And through unpack: the same tree, whatever the kicks overlapped with.
    src = tmp_path / "src"
    build(
        src,
        {
            b"d%d" % d: Node(
                "dir",
                children={b"f%03d" % i: Node("file", data=b"%d" % i * 500) for i in range(60)},
            )
            for d in range(5)
        },
    )
    oxbak.pack(src, tmp_path / "a.oxbak")
    oxbak.unpack(tmp_path / "a.oxbak", tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_hardlinks_to_files_before_and_after_the_first_hardlink(tmp_path: Path) -> None:
    # The set of paths a hardlink may name is built at the first hardlink, then grows with
    # each file: d names c, a file that comes after the first link, b.
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"a": Node("file", data=b"a"),
            b"b": Node("hardlink", target=b"a"),
            b"c": Node("file", data=b"c"),
            b"d": Node("hardlink", target=b"c"),
        },
    )
    oxbak.pack(src, tmp_path / "a.oxbak")
    kinds = [(e.path, e.type) for e in oxbak.list_entries(tmp_path / "a.oxbak")][1:]
    assert kinds == [(b"a", "file"), (b"b", "hardlink"), (b"c", "file"), (b"d", "hardlink")]
    oxbak.unpack(tmp_path / "a.oxbak", tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)
    assert os.stat(tmp_path / "dest" / "c").st_ino == os.stat(tmp_path / "dest" / "d").st_ino
