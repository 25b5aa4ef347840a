"""Ownership: names stored beside the ids, restored by name as root, one warning otherwise.

Real files owned by real users of this machine (``daemon``, ``nobody``/``nogroup``) and by
ids with no name; the preference of a name over its stored id is shown with a crafted
archive (tests/toc_builders.py) whose member says ``uname=daemon`` beside an id that is not
daemon's, rather than by adding users to the machine; the unprivileged case runs the
command as user 65534 (``setpriv``).
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import tarfile
from pathlib import Path

import pytest
import zstandard

import oxbak
from builders import Entry
from pipelike import Unseekable
from toc_builders import build_v2
from tools import NOBODY, run_oxbak

ROOT = os.geteuid() == 0
NO_USER, NO_GROUP = 4242, 4343
root_only = pytest.mark.skipif(not ROOT, reason="only root can give files to other owners")


def _ids(user: str, group: str) -> tuple[int, int]:
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"this machine has no {user}:{group}")


def _no_names() -> None:
    for lookup, n in ((pwd.getpwuid, NO_USER), (grp.getgrgid, NO_GROUP)):
        try:
            lookup(n)
        except KeyError:
            continue
        pytest.skip(f"id {n} has a name on this machine")


def owners(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            p = Path(dirpath, name)
            st = p.lstat()
            out.setdefault(os.path.relpath(p, root), (st.st_uid, st.st_gid))
    return out


def make_tree(src: Path) -> None:
    daemon = _ids("daemon", "daemon")
    nobody = _ids("nobody", "nogroup")
    _no_names()
    (src / "d").mkdir(parents=True)
    for name, ids in [
        ("root.txt", (0, 0)),
        ("daemon.txt", daemon),
        ("nobody.txt", nobody),
        ("d/orphan.txt", (NO_USER, NO_GROUP)),
        ("mixed.txt", (daemon[0], NO_GROUP)),
    ]:
        (src / name).write_bytes(name.encode())
        os.chown(src / name, *ids)
    os.chown(src / "d", *daemon)
    os.symlink("root.txt", src / "link")
    os.chown(src / "link", NO_USER, nobody[1], follow_symlinks=False)


@root_only
def test_root_restores_owners_by_default(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    oxbak.pack(src, tmp_path / "a.oxbak")
    for n, archive in enumerate(
        (tmp_path / "a.oxbak", Unseekable((tmp_path / "a.oxbak").read_bytes()))
    ):
        oxbak.unpack(archive, tmp_path / f"dest{n}")  # type: ignore[arg-type]
        assert owners(tmp_path / f"dest{n}") == owners(src)
    oxbak.unpack(tmp_path / "a.oxbak", tmp_path / "only", only=["d"])
    assert owners(tmp_path / "only")["d/orphan.txt"] == (NO_USER, NO_GROUP)


@root_only
def test_owner_names_are_in_the_tar_headers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    oxbak.pack(src, tmp_path / "a.oxbak")
    with open(tmp_path / "a.oxbak", "rb") as fh:
        data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = {m.name: (m.uname, m.gname) for m in tf.getmembers()}
    assert names["tree/daemon.txt"] == ("daemon", "daemon")
    assert names["tree/nobody.txt"] == ("nobody", "nogroup")
    assert names["tree/d/orphan.txt"] == ("", "")  # no name: the ids alone
    assert names["tree/mixed.txt"] == ("daemon", "")
    assert names["manifest.json"] == ("", "")
    entries = {e.name: (e.user, e.group) for e in oxbak.list_entries(Unseekable(data_of(tmp_path)))}
    assert entries["daemon.txt"] == ("daemon", "daemon")  # from a pipe too, now


def data_of(tmp_path: Path) -> bytes:
    return (tmp_path / "a.oxbak").read_bytes()


def _crafted(user: bytes, group: bytes, toc_user: str | None = None) -> bytes:
    """An archive whose file f has ids 4242:4343 and the names *user*:*group*."""
    entry = Entry.file(
        b"f",
        b"x",
        uid=NO_USER,
        gid=NO_GROUP,
        pax=[(b"uname", user), (b"gname", group)],
        index={"user": toc_user or user.decode(), "group": group.decode()},
    )
    return build_v2([entry]).data


@root_only
@pytest.mark.parametrize("stream", [False, True])
def test_a_name_known_here_wins_over_the_stored_id(stream: bool, tmp_path: Path) -> None:
    daemon = _ids("daemon", "daemon")
    _no_names()
    data = _crafted(b"daemon", b"daemon")

    def archive() -> io.BytesIO:
        return Unseekable(data) if stream else io.BytesIO(data)

    oxbak.unpack(archive(), tmp_path / "byname")
    assert owners(tmp_path / "byname")["f"] == daemon
    oxbak.unpack(archive(), tmp_path / "numeric", owner="numeric")
    assert owners(tmp_path / "numeric")["f"] == (NO_USER, NO_GROUP)
    oxbak.unpack(archive(), tmp_path / "none", owner="none")
    assert owners(tmp_path / "none")["f"] == (0, 0)
    # A name this machine does not know: the stored ids.
    oxbak.unpack(io.BytesIO(_crafted(b"no-such-user", b"daemon")), tmp_path / "unknown")
    assert owners(tmp_path / "unknown")["f"] == (NO_USER, daemon[1])


def test_toc_and_member_must_agree_on_owner_names(tmp_path: Path) -> None:
    data = _crafted(b"daemon", b"daemon", toc_user="root")
    report = oxbak.verify(io.BytesIO(data))
    assert any("disagrees with the member of 'f'" in p for p in report.problems)
    with pytest.raises(oxbak.CorruptArchiveError, match="does not match the member at offset"):
        oxbak.unpack(io.BytesIO(data), tmp_path / "only", only=["f"])


@root_only
def test_cli_owner_options(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    archive = str(tmp_path / "a.oxbak")
    assert run_oxbak("pack", str(src), "-o", archive).returncode == 0
    for flag, dest in [("--same-owner", "same"), ("--numeric-owner", "numeric"), ("", "plain")]:
        proc = run_oxbak("unpack", archive, str(tmp_path / dest), *([flag] if flag else []))
        assert proc.returncode == 0, proc.stderr
        assert owners(tmp_path / dest) == owners(src)
    proc = run_oxbak("unpack", archive, str(tmp_path / "none"), "--no-same-owner")
    assert proc.returncode == 0, proc.stderr
    assert set(owners(tmp_path / "none").values()) == {(0, 0)}
    proc = run_oxbak("unpack", archive, str(tmp_path / "both"), "--no-same-owner", "--numeric-owner")
    assert proc.returncode == 2
    assert b"--no-same-owner cannot be combined" in proc.stderr


@root_only
@pytest.mark.tools("setpriv")
def test_an_unprivileged_restore_says_once_that_owners_are_not_restored(shared: Path) -> None:
    src = shared / "src"
    make_tree(src)
    oxbak.pack(src, shared / "a.oxbak", mode=0o644)
    (shared / "out").mkdir()
    os.chmod(shared / "out", 0o777)
    proc = run_oxbak("unpack", str(shared / "a.oxbak"), str(shared / "out" / "dest"), user=NOBODY)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.decode().splitlines() if "warning" in ln]
    assert warnings == [
        "oxbak: warning: ownership not restored (only root can give files to other owners): "
        "7 entries belonged to other users or groups than the current one, e.g. '.' "
        "(root:root); they now belong to the current user"
    ]
    assert set(owners(shared / "out" / "dest").values()) == {(65534, 65534)}
    proc = run_oxbak("unpack", str(shared / "a.oxbak"), str(shared / "out" / "quiet"),
                "--no-same-owner", user=NOBODY)  # fmt: skip
    assert proc.returncode == 0 and b"warning" not in proc.stderr, proc.stderr
