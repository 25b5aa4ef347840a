"""The installed ``oxbak`` command, run in real subprocesses.

Every test goes through the console script the package installs (next to the running
interpreter), so argument parsing, exit codes, what goes to stdout (data only) and to
stderr (messages only), and the one-line error contract are checked as a user sees them.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import grp
import json
import os
import pty
import pwd
import random
import re
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import blake3
import pytest

from tools import require_tool
from treeutil import set_mtimes

OXBAK = Path(sys.executable).parent / "oxbak"
EPOCH = "1700000000"
EPOCH_RFC3339 = "2023-11-14T22:13:20Z"
NON_UTF8 = b"caf\xe9.json"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMMANDS = ("pack", "unpack", "info", "list", "verify", "recover", "abort-uploads")

Snapshot = dict[bytes, tuple[object, ...]]


# --------------------------------------------------------------------------- helpers


def _env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a child: ours, without OXBAK_DEBUG, with *extra* applied."""
    env = dict(os.environ)
    env.pop("OXBAK_DEBUG", None)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def oxbak(
    *args: str | os.PathLike[str],
    input: bytes | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed command; stdin is empty unless *input* is given."""
    return subprocess.run(
        [str(OXBAK), *map(str, args)],
        input=input if input is not None else b"",
        capture_output=True,
        env=_env(env),
        cwd=cwd,
        timeout=60,
    )


def sh(script: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a bash pipeline (with pipefail)."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        env=_env(),
        cwd=cwd,
        timeout=60,
    )


def q(path: str | os.PathLike[str]) -> str:
    return shlex.quote(str(path))


def text(data: bytes) -> str:
    return data.decode("utf-8")


def assert_one_error(
    result: subprocess.CompletedProcess[bytes], code: int = 1, *, stdout_empty: bool = True
) -> str:
    """Exit *code*, exactly one stderr line ``oxbak: error: …``, no traceback; the line."""
    err = text(result.stderr)
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("oxbak: error: "), err
    if stdout_empty:
        assert result.stdout == b""
    return lines[0]


def assert_usage_error(result: subprocess.CompletedProcess[bytes], needle: str) -> None:
    """A usage error: exit 2, nothing on stdout, one `oxbak: error:` line with the reason."""
    err = text(result.stderr)
    assert result.returncode == 2, (result.returncode, err)
    assert result.stdout == b""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oxbak: error: "), err
    assert needle in err, err


def assert_ok(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, (result.returncode, result.stderr.decode(errors="replace"))
    assert b"Traceback" not in result.stderr


def make_tree(root: Path) -> Path:
    """A small tree with every kind of entry oxbak stores, nanosecond mtimes included."""
    rng = random.Random(1234)
    (root / "a" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "sub" / "dir").mkdir(parents=True)
    (root / "a" / "f.txt").write_bytes(b"hello, oxbak\n")
    (root / "a" / "run.sh").write_bytes(b"#!/bin/sh\necho run\n")
    (root / "a" / "deep" / "data.bin").write_bytes(rng.randbytes(64 * 1024))
    (root / "a" / "x.tmp").write_bytes(b"scratch")
    (root / "sub" / "keep.txt").write_bytes(b"keep me\n" * 50)
    (root / "sub" / "dir" / "y.txt").write_bytes(b"inside sub/dir\n")
    (root / "top.tmp").write_bytes(b"scratch too")
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as fh:
        fh.write(b'{"name": "caf\xc3\xa9"}\n')
    os.symlink("a/f.txt", root / "link")
    os.symlink("../sub/keep.txt", root / "a" / "up")
    os.link(root / "a" / "f.txt", root / "hl")
    os.chmod(root / "a" / "run.sh", 0o755)
    os.chmod(root / "a" / "f.txt", 0o640)
    os.chmod(root / "sub" / "keep.txt", 0o600)
    os.chmod(root / "a", 0o750)
    os.chmod(root / "empty", 0o700)
    set_mtimes(root, 1_600_000_000_123_456_789)
    return root


def snapshot(root: Path) -> Snapshot:
    """Everything a restore must reproduce: per relative path its type, mode, mtime (ns),
    content or link target, and for files the set of paths sharing its inode."""
    root_b = os.fsencode(root)
    by_inode: dict[int, list[bytes]] = {}
    raw: dict[bytes, os.stat_result] = {b".": os.lstat(root_b)}
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            raw[rel] = st
            if stat.S_ISREG(st.st_mode):
                by_inode.setdefault(st.st_ino, []).append(rel)
    snap: Snapshot = {}
    for rel, st in raw.items():
        full = os.path.join(root_b, rel)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            snap[rel] = ("symlink", os.readlink(full), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            snap[rel] = ("dir", mode, st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as fh:
                content = fh.read()
            links = tuple(sorted(by_inode[st.st_ino]))
            snap[rel] = ("file", mode, st.st_mtime_ns, content, links)
        else:
            snap[rel] = ("other", stat.S_IFMT(st.st_mode))
    return snap


def content_bytes(root: Path) -> int:
    """Bytes of regular-file content in the tree, each inode counted once."""
    seen: dict[object, int] = {}
    for value in snapshot(root).values():
        if value[0] == "file":
            content, links = value[3], value[4]
            assert isinstance(content, bytes)
            seen[links] = len(content)
    return sum(seen.values())


def archive_paths(archive: Path) -> set[str]:
    result = oxbak("list", "--json", archive)
    assert_ok(result)
    return {json.loads(line)["path"] for line in text(result.stdout).splitlines()}


def info_json(archive: Path) -> dict[str, object]:
    result = oxbak("info", "--json", archive)
    assert_ok(result)
    assert result.stderr == b""
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def display(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(".") and "oxbak" in n)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def command() -> Path:
    assert OXBAK.is_file(), f"the console script is not installed at {OXBAK}"
    return OXBAK


@pytest.fixture
def src(tmp_path: Path, command: Path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def archive(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out" / "src.oxbak"
    out.parent.mkdir()
    assert_ok(oxbak("pack", src, "-o", out, env={"SOURCE_DATE_EPOCH": EPOCH}))
    return out


@pytest.fixture(scope="module")
def many_archive(tmp_path_factory: pytest.TempPathFactory, command: Path) -> Path:
    """An archive with 2,000 entries: far more `list` output than a pipe buffer holds."""
    base = tmp_path_factory.mktemp("many")
    root = base / "many"
    for d in range(20):
        (root / f"d{d:02}").mkdir(parents=True)
        for i in range(100):
            (root / f"d{d:02}" / f"a-file-with-a-longer-name-{i:03}.txt").write_bytes(b"x")
    out = base / "many.oxbak"
    assert_ok(oxbak("pack", root, "-o", out))
    return out


# --------------------------------------------------------------------------- version, help


def test_version(command: Path) -> None:
    from importlib.metadata import version

    result = oxbak("--version")
    assert_ok(result)
    assert result.stderr == b""
    assert text(result.stdout).strip() == f"oxbak, version {version('oxbak')}"
    assert_ok(short := oxbak("-V"))
    assert short.stdout == result.stdout


def test_python_dash_m_version(command: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oxbak", "--version"], capture_output=True, env=_env(), timeout=60
    )
    assert_ok(result)
    assert result.stderr == b""
    assert result.stdout == oxbak("--version").stdout


def test_top_level_help(command: Path) -> None:
    result = oxbak("--help")
    assert_ok(result)
    assert result.stderr == b""
    out = text(result.stdout)
    assert out.startswith("Usage: oxbak ")
    assert "Example" in out
    for cmd in COMMANDS:
        assert re.search(rf"^\s+{cmd}\s", out, re.M), f"{cmd} missing from --help"


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help_shows_an_example(command: Path, cmd: str, flag: str) -> None:
    result = oxbak(cmd, flag)
    assert_ok(result)
    assert result.stderr == b""
    out = text(result.stdout)
    assert out.startswith(f"Usage: oxbak {cmd} ")
    assert "Example" in out
    assert re.search(rf"^\s+(\S+ \| )?.*oxbak {cmd}\b", out, re.M), out


def test_debug_is_accepted_after_the_command(tmp_path: Path, command: Path) -> None:
    junk = tmp_path / "junk.oxbak"
    junk.write_bytes(b"not an archive\n" * 10)
    for args in (("--debug", "info", junk), ("info", junk, "--debug")):
        result = oxbak(*args)
        assert result.returncode == 1
        assert "Traceback" in text(result.stderr)  # the traceback --debug asks for
        assert "no such option" not in text(result.stderr)


def test_force_onto_a_directory_is_refused_up_front(src: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = oxbak("pack", src, "-o", tmp_path / "out", "--force")
    assert result.returncode == 1
    assert text(result.stderr).splitlines() == [
        f"oxbak: error: cannot write the archive to {str(tmp_path / 'out')!r}: it is a directory"
    ]
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.tools("tar", "zstd")
def test_every_command_calls_a_foreign_file_not_an_archive(src: Path, tmp_path: Path) -> None:
    """Random bytes, a plain .tar.zst (GNU tar's) and an empty file are "not an oxbak
    archive", named, in one line, by every command that reads one: never "damaged"."""
    plain = tmp_path / "plain.tar.zst"
    assert subprocess.run(
        ["tar", "--zstd", "-cf", str(plain), "-C", str(src), "."], capture_output=True
    ).returncode == 0
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    for path in (plain, junk, empty):
        for args in (
            ("info", path),
            ("list", path),
            ("cat", path, "a.txt"),
            ("verify", path),
            ("diff", path, src),
            ("unpack", path, tmp_path / "dest"),
        ):
            result = oxbak(*args)
            assert result.returncode == (2 if args[0] == "diff" else 1), (args, result.stderr)
            lines = text(result.stderr).splitlines()
            assert len(lines) == 1, (args, lines)
            assert lines[0].startswith(f"oxbak: error: {path}: not an oxbak archive: "), lines
            assert "damaged" not in lines[0]
            assert not (tmp_path / "dest").exists()


def test_names_near_name_max_work(src: Path, tmp_path: Path) -> None:
    """A DEST or OUT whose name is 245 bytes: staging, backup and temp names still fit."""
    out = tmp_path / ("o" * 239 + ".oxbak")
    assert_ok(oxbak("pack", src, "-o", out))
    assert_ok(oxbak("pack", src, "-o", out, "--force"))
    dest = tmp_path / ("d" * 245)
    assert_ok(oxbak("unpack", out, dest))
    for flag in ("--replace", "--merge"):
        assert_ok(oxbak("unpack", out, dest, flag))
    assert snapshot(dest) == snapshot(src)
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, dest.name, "src"])


def test_list_never_sends_control_characters_to_the_terminal(tmp_path: Path, command: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "two\nlines.json").write_bytes(b"{}")
    (src / "\x1b[31mred").write_bytes(b"{}")
    os.symlink("\x1b]0;title\x07", src / "link")
    out = tmp_path / "a.oxbak"
    assert_ok(oxbak("pack", src, "-o", out))
    listing = oxbak("list", out).stdout
    assert b"\x1b" not in listing and b"\x07" not in listing
    lines = text(listing).splitlines()
    assert len(lines) == 4  # the root and three entries: the newline did not split one
    assert any(line.endswith("two\\u000alines.json") for line in lines)
    assert any(line.endswith("link -> \\u001b]0;title\\u0007") for line in lines)


def test_a_symlink_loop_is_restored_as_stored(tmp_path: Path, command: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("b", src / "a")
    os.symlink("a", src / "b")
    os.symlink("self", src / "self")
    out = tmp_path / "loop.oxbak"
    packed = oxbak("pack", src, "-o", out)
    assert_ok(packed)
    assert "outside" not in text(packed.stderr)
    assert_ok(oxbak("unpack", out, tmp_path / "dest"))
    for name, target in (("a", "b"), ("b", "a"), ("self", "self")):
        assert os.readlink(tmp_path / "dest" / name) == target


def _without_read_override() -> list[str]:
    """A prefix that runs a command without the capability to read any file (as root)."""
    if os.geteuid() != 0:
        return []  # not root: a mode-000 file is unreadable already
    require_tool("capsh")  # libcap2-bin: drops root's read override
    return [str(shutil.which("capsh")), "--drop=cap_dac_override,cap_dac_read_search", "--", "-c"]


def test_pack_finishes_when_a_file_cannot_be_read(tmp_path: Path, command: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_bytes(b"ok\n")
    secret = src / "sub" / "secret.txt"
    secret.write_bytes(b"secret\n")
    secret.chmod(0)
    out = tmp_path / "a.oxbak"
    prefix = _without_read_override()
    argv = [str(OXBAK), "pack", str(src), "-o", str(out)]
    cmd = [*prefix, " ".join(shlex.quote(a) for a in argv)] if prefix else argv
    result = subprocess.run(cmd, capture_output=True, env=_env(), timeout=60)
    err = text(result.stderr)
    assert result.returncode == 3, err  # written, partial
    assert "'sub/secret.txt' could not be read (Permission denied); not in the archive" in err
    report = oxbak("verify", "--json", out)
    assert report.returncode == 3
    assert json.loads(report.stdout)["missing"] == ["sub/secret.txt"]
    assert_ok(oxbak("unpack", out, tmp_path / "dest"))
    assert (tmp_path / "dest" / "ok.txt").read_bytes() == b"ok\n"
    assert not (tmp_path / "dest" / "sub" / "secret.txt").exists()


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        (0o000, "could not be listed (Permission denied)"),
        # Listed, but no entry in it can be stat'ed (no search permission).
        (0o644, "could not be read in full ('sub/locked/inside.txt': Permission denied)"),
    ],
    ids=["mode-000", "no-search"],
)
def test_pack_finishes_when_a_directory_cannot_be_read(
    tmp_path: Path, command: Path, mode: int, why: str
) -> None:
    src = tmp_path / "src"
    locked = src / "sub" / "locked"
    locked.mkdir(parents=True)
    (src / "ok.txt").write_bytes(b"ok\n")
    (locked / "inside.txt").write_bytes(b"secret\n")
    (src / "sub" / "z.txt").write_bytes(b"after\n")
    locked.chmod(mode)
    out = tmp_path / "a.oxbak"
    prefix = _without_read_override()
    argv = [str(OXBAK), "pack", str(src), "-o", str(out)]
    cmd = [*prefix, " ".join(shlex.quote(a) for a in argv)] if prefix else argv
    result = subprocess.run(cmd, capture_output=True, env=_env(), timeout=60)
    err = text(result.stderr)
    assert result.returncode == 3, err  # written, partial: not an abort
    assert "Traceback" not in err
    assert f"oxbak: warning: directory 'sub/locked' {why}" in err
    assert "PARTIAL" in err
    # The directory is in the archive (its own metadata), flagged as missing its contents.
    info = info_json(out)
    assert info["partial"] is True and info["status"] == {"changed": 0, "missing": 1}
    listed = {
        row["path"]: row
        for row in map(json.loads, text(oxbak("list", "--json", out).stdout).splitlines())
    }
    assert set(listed) == {".", "ok.txt", "sub", "sub/locked", "sub/z.txt"}
    assert listed["sub/locked"]["type"] == "dir" and listed["sub/locked"]["mode"] == f"{mode:04o}"
    report = oxbak("verify", "--json", out)
    assert report.returncode == 3, report.stderr  # intact, but partial
    data = json.loads(report.stdout)
    assert data["ok"] is True and data["missing"] == ["sub/locked/"]
    restored = oxbak("unpack", out, tmp_path / "dest")
    assert_ok(restored)
    assert "PARTIAL" in text(restored.stderr) and "sub/locked/" in text(restored.stderr)
    dest = tmp_path / "dest"
    assert (dest / "ok.txt").read_bytes() == b"ok\n"
    assert (dest / "sub" / "z.txt").read_bytes() == b"after\n"
    assert os.listdir(dest / "sub" / "locked") == []  # restored empty, with its mode
    assert stat.S_IMODE(os.lstat(dest / "sub" / "locked").st_mode) == mode


def test_pack_exclude_caches_and_one_file_system(tmp_path: Path, command: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55\n"
    )
    (src / "cache" / "big.bin").write_bytes(b"x" * 1000)
    (src / "state.json").write_bytes(b"{}")
    out = tmp_path / "a.oxbak"
    assert_ok(oxbak("pack", src, "-o", out, "--exclude-caches", "--one-file-system"))
    listed = [json.loads(line)["path"] for line in text(oxbak("list", "--json", out).stdout).splitlines()]
    assert listed == [".", "cache", "cache/CACHEDIR.TAG", "state.json"]


def test_pack_exclude_from_a_file_reports_what_it_did(src: Path, tmp_path: Path) -> None:
    ignore = tmp_path / "ignore"
    ignore.write_text("# not packed\nsub/\n")
    out = tmp_path / "a.oxbak"
    result = oxbak("pack", src, "-o", out, "--exclude-from", ignore, "--exclude", "no-such-*")
    assert_ok(result)
    err = text(result.stderr)
    assert "(1 excluded)" in err  # the directory, with everything in it
    assert "oxbak: warning: exclude pattern 'no-such-*' matched nothing" in err
    listed = [json.loads(line)["path"] for line in text(oxbak("list", "--json", out).stdout).splitlines()]
    assert not any(p == "sub" or p.startswith("sub/") for p in listed)


def test_errors_about_an_archive_name_it(archive: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.oxbak"
    cut.write_bytes(archive.read_bytes()[:-200])
    for args in (("list", cut), ("unpack", cut, tmp_path / "d"), ("cat", cut, "a/one.json")):
        result = oxbak(*args)
        lines = text(result.stderr).splitlines()
        assert result.returncode == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"oxbak: error: {cut}: "), lines
    piped = oxbak("unpack", "-", tmp_path / "e", input=cut.read_bytes())
    assert text(piped.stderr).startswith("oxbak: error: standard input: ")


def test_no_arguments_prints_a_short_usage(command: Path) -> None:
    result = oxbak()
    assert result.returncode == 2 and result.stdout == b""
    lines = text(result.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("usage: oxbak COMMAND"), lines
    assert "unpack" in lines[0] and "--help" in lines[0]


def test_archives_are_private_unless_asked(src: Path, tmp_path: Path) -> None:
    assert_ok(oxbak("pack", src, "-o", tmp_path / "a.oxbak"))
    assert stat.S_IMODE(os.stat(tmp_path / "a.oxbak").st_mode) == 0o600
    assert_ok(oxbak("pack", src, "-o", tmp_path / "b.oxbak", "--mode", "0640"))
    assert stat.S_IMODE(os.stat(tmp_path / "b.oxbak").st_mode) == 0o640
    # Replacing an archive gives the new one the asked mode, not the old one's.
    assert_ok(oxbak("pack", src, "-o", tmp_path / "b.oxbak", "--force"))
    assert stat.S_IMODE(os.stat(tmp_path / "b.oxbak").st_mode) == 0o600
    assert_usage_error(oxbak("pack", src, "-o", tmp_path / "c.oxbak", "--mode", "rw"), "rw")
    assert not (tmp_path / "c.oxbak").exists()


def test_unknown_command_is_a_usage_error(command: Path) -> None:
    assert_usage_error(oxbak("frobnicate"), "frobnicate")


# --------------------------------------------------------------------------- pack


def test_pack_default_output_name_in_cwd(src: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    before = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    result = oxbak("pack", src, cwd=work)
    after = dt.datetime.now(tz=dt.UTC)
    assert_ok(result)
    assert result.stdout == b""
    names = os.listdir(work)
    assert len(names) == 1, names
    name = names[0]
    assert re.fullmatch(r"src-\d{8}T\d{6}Z\.oxbak", name), name
    stamp = dt.datetime.strptime(name[4:20], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert before <= stamp <= after
    assert text(result.stderr).rstrip("\n").endswith(f"-> {name}")
    assert_ok(oxbak("verify", work / name))


def test_pack_to_named_output(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "named.oxbak"
    result = oxbak("pack", src, "-o", out)
    assert_ok(result)
    assert result.stdout == b""
    assert out.read_bytes().startswith(ZSTD_MAGIC)
    assert leftovers(tmp_path) == []
    assert_ok(oxbak("verify", out))


def test_pack_refuses_existing_output_without_force(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.oxbak"
    precious = b"not an archive, but someone's file\n" * 10
    out.write_bytes(precious)
    line = assert_one_error(oxbak("pack", src, "-o", out))
    assert "exists" in line and "--force" in line
    assert out.read_bytes() == precious
    assert leftovers(tmp_path) == []


def test_pack_force_replaces_existing_output(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.oxbak"
    out.write_bytes(b"old")
    assert_ok(oxbak("pack", src, "-o", out, "--force"))
    assert out.read_bytes().startswith(ZSTD_MAGIC)
    assert leftovers(tmp_path) == []
    assert_ok(oxbak("verify", out))


def test_pack_to_stdout_writes_only_the_archive(src: Path) -> None:
    result = oxbak("pack", src, "-o", "-")
    assert_ok(result)
    assert result.stdout.startswith(ZSTD_MAGIC)
    err = text(result.stderr)  # messages only: text, no archive bytes
    assert all(line.startswith(("packed ", "oxbak: ")) for line in err.splitlines()), err
    # `verify -` rejects any byte before or after the archive.
    verified = oxbak("verify", "-", input=result.stdout)
    assert_ok(verified)
    assert verified.stdout == b""


def test_pack_to_a_terminal_is_refused(src: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [str(OXBAK), "pack", str(src), "-o", "-"],
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=_env(),
            timeout=60,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "terminal" in text(result.stderr)


def test_pipeline_pack_stdout_into_unpack_stdin_restores_the_tree(
    src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "restored"
    pack_err, unpack_err = tmp_path / "pack.err", tmp_path / "unpack.err"
    result = sh(
        f"{q(OXBAK)} pack {q(src)} -o - 2>{q(pack_err)} "
        f"| {q(OXBAK)} unpack - {q(dest)} 2>{q(unpack_err)}"
    )
    assert result.returncode == 0, (pack_err.read_text(), unpack_err.read_text())
    assert result.stdout == b""
    assert pack_err.read_text().startswith("packed ")
    assert "Traceback" not in unpack_err.read_text()
    restored = snapshot(dest)
    assert restored == snapshot(src)
    # Spelled out, the properties the equality covers:
    dest_b = os.fsencode(dest)
    assert os.readlink(dest / "link") == "a/f.txt"
    assert os.stat(dest / "hl").st_ino == os.stat(dest / "a" / "f.txt").st_ino
    assert os.stat(dest / "a" / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(dest / "a" / "f.txt").st_mtime_ns % 1_000_000_000 != 0
    assert os.stat(dest / "a" / "f.txt").st_mtime_ns == os.stat(src / "a" / "f.txt").st_mtime_ns
    assert os.path.isdir(dest / "empty") and os.listdir(dest / "empty") == []
    with open(os.path.join(dest_b, NON_UTF8), "rb") as fh:
        assert fh.read() == b'{"name": "caf\xc3\xa9"}\n'


def test_pack_labels_show_in_info(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.oxbak"
    assert_ok(oxbak("pack", src, "-o", out, "--label", "k=v", "--label", "app_version=0.4.1=x"))
    assert info_json(out)["labels"] == {"k": "v", "app_version": "0.4.1=x"}


@pytest.mark.parametrize("label", ["novalue", "=value"])
def test_pack_bad_label_is_a_usage_error(src: Path, tmp_path: Path, label: str) -> None:
    out = tmp_path / "never.oxbak"
    assert_usage_error(oxbak("pack", src, "-o", out, "--label", label), "KEY=VALUE")
    assert not out.exists()


@pytest.mark.parametrize("level", ["0", "20", "fast"])
def test_pack_bad_level_is_a_usage_error(src: Path, tmp_path: Path, level: str) -> None:
    out = tmp_path / "never.oxbak"
    assert_usage_error(oxbak("pack", src, "-o", out, "--level", level), "--level")
    assert not out.exists()


def test_pack_exclude(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ex.oxbak"
    assert_ok(oxbak("pack", src, "-o", out, "--exclude", "*.tmp", "--exclude", "sub/dir"))
    paths = archive_paths(out)
    assert "a/x.tmp" not in paths and "top.tmp" not in paths
    assert "sub/dir" not in paths and "sub/dir/y.txt" not in paths
    assert {"sub", "sub/keep.txt", "a/f.txt", "a/deep/data.bin"} <= paths
    assert_ok(oxbak("verify", out))


def test_pack_skips_fifo_and_socket_with_warnings(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.mkfifo(src / "pipe")
    # AF_UNIX paths are limited to ~108 bytes: bind relative to the directory.
    with monkeypatch.context() as patch, socket.socket(socket.AF_UNIX) as sock:
        patch.chdir(src / "sub")
        sock.bind("sock")
    out = tmp_path / "special.oxbak"
    result = oxbak("pack", src, "-o", out)
    assert_ok(result)
    assert result.stdout == b""
    warnings = [ln for ln in text(result.stderr).splitlines() if ln.startswith("oxbak: warning:")]
    assert len(warnings) == 2, warnings
    assert any("'pipe'" in w for w in warnings)
    assert any("'sub/sock'" in w for w in warnings)
    paths = archive_paths(out)
    assert "pipe" not in paths and "sub/sock" not in paths
    assert info_json(out)["skipped"] == 2


def test_pack_warns_about_external_symlink(src: Path, tmp_path: Path) -> None:
    os.symlink("../outside", src / "ext")
    result = oxbak("pack", src, "-o", tmp_path / "ext.oxbak")
    assert_ok(result)
    warnings = [ln for ln in text(result.stderr).splitlines() if ln.startswith("oxbak: warning:")]
    assert len(warnings) == 1, warnings
    assert "'ext'" in warnings[0] and "../outside" in warnings[0]


def test_pack_summary_line(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "sum.oxbak"
    result = oxbak("pack", src, "-o", out)
    assert_ok(result)
    assert result.stdout == b""
    lines = text(result.stderr).splitlines()
    assert len(lines) == 1, lines
    size = r"[\d,.]+ (?:B|KB|MB|GB)"
    m = re.fullmatch(
        rf"packed (?P<entries>[\d,]+) entries \(.*\), (?P<bin>{size}) in -> (?P<bout>{size}), "
        rf"ratio (?P<ratio>[\d.]+)x, (?P<secs>[\d.]+) s -> (?P<out>.+)",
        lines[0],
    )
    assert m, lines[0]
    assert int(m["entries"].replace(",", "")) == len(snapshot(src))
    assert m["out"] == str(out)


def test_pack_json_summary_on_stdout(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "j.oxbak"
    result = oxbak("pack", src, "-o", out, "--json")
    assert_ok(result)
    assert result.stderr == b""
    data = json.loads(result.stdout)
    assert data["output"] == str(out)
    assert data["entries"] == len(snapshot(src))
    assert data["bytes_out"] == out.stat().st_size
    assert data["bytes_in"] == data["manifest"]["totals"]["bytes"]
    assert data["partial"] is False and data["changed"] == [] and data["missing"] == []
    assert isinstance(data["seconds"], (int, float))


def test_pack_json_with_stdout_output_is_a_usage_error(src: Path) -> None:
    assert_usage_error(oxbak("pack", src, "-o", "-", "--json"), "--json")


def test_pack_missing_source(tmp_path: Path, command: Path) -> None:
    out = tmp_path / "never.oxbak"
    line = assert_one_error(oxbak("pack", tmp_path / "nope", "-o", out))
    assert "nope" in line
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_pack_source_is_a_file(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.oxbak"
    line = assert_one_error(oxbak("pack", src / "a" / "f.txt", "-o", out))
    assert "f.txt" in line
    assert not out.exists()


def test_pack_output_directory_missing(src: Path, tmp_path: Path) -> None:
    assert_one_error(oxbak("pack", src, "-o", tmp_path / "no" / "such" / "x.oxbak"))


def test_pack_exit_3_when_a_file_changes_while_it_is_read(tmp_path: Path, command: Path) -> None:
    # A file larger than the small-file limit is read in chunks between two fstat()s; a
    # thread touching it without pause changes its ctime during the read, every time.
    root = tmp_path / "live"
    root.mkdir()
    big = root / "big.log"
    big.write_bytes(os.urandom(12 << 20).hex().encode())
    (root / "calm.txt").write_bytes(b"calm\n")
    stop = threading.Event()

    def touch() -> None:
        while not stop.is_set():
            os.utime(big)

    toucher = threading.Thread(target=touch)
    toucher.start()
    try:
        result = oxbak("pack", root, "-o", tmp_path / "live.oxbak")
    finally:
        stop.set()
        toucher.join()
    err = text(result.stderr)
    assert result.returncode == 3, err
    assert result.stdout == b""
    assert "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if ln.startswith("oxbak: warning:")]
    assert any("'big.log'" in w and "changed" in w for w in warnings), err
    assert any("PARTIAL" in w for w in warnings), err

    archive = tmp_path / "live.oxbak"
    info = info_json(archive)
    assert info["partial"] is True and info["changed"] == 1
    verified = oxbak("verify", "--json", archive)
    assert verified.returncode == 3, verified.stderr  # intact, but partial: as pack said
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["partial"] is True
    assert report["changed"] == ["big.log"] and report["missing"] == []
    restored = oxbak("unpack", archive, tmp_path / "dest")
    assert_ok(restored)
    assert "PARTIAL" in text(restored.stderr) and "big.log" in text(restored.stderr)
    assert (tmp_path / "dest" / "calm.txt").read_bytes() == b"calm\n"


# --------------------------------------------------------------------------- info


def test_info_human(archive: Path, src: Path) -> None:
    result = oxbak("info", archive)
    assert_ok(result)
    assert result.stderr == b""
    out = text(result.stdout)
    assert re.search(r"^format:\s+oxbak version 2$", out, re.M), out
    assert re.search(rf"^created:\s+{EPOCH_RFC3339}$", out, re.M), out
    assert re.search(r"^entries:\s+17 \(8 files, 6 dirs, 2 symlinks, 1 hardlinks\)$", out, re.M)
    assert re.search(r"^sections:\s+5$", out, re.M), out
    for line in ("  a: 4", "  a/deep: 1", "  .: 4", "  sub: 1", "  sub/dir: 1"):
        assert line in out.splitlines(), out
    assert re.search(r"^compression:\s+zstd level 3$", out, re.M)
    assert re.search(r"^partial:\s+no$", out, re.M)


def test_info_json(archive: Path, src: Path) -> None:
    data = info_json(archive)
    for key in (
        "format",
        "version",
        "created_at",
        "oxbak_version",
        "sections",
        "totals",
        "compression",
        "labels",
        "skipped",
        "partial",
    ):
        assert key in data, key
    assert data["format"] == "oxbak"
    assert data["version"] == 2
    assert data["created_at"] == EPOCH_RFC3339
    assert data["totals"] == {
        "files": 8,
        "hardlinks": 1,
        "directories": 6,
        "symlinks": 2,
        "bytes": content_bytes(src),
    }
    assert data["partial"] is False
    assert data["status"] == {"changed": 0, "missing": 0}
    assert data["labels"] == {}
    assert data["skipped"] == 0
    assert data["compression"] == {"algorithm": "zstd", "level": 3, "checksum": True}


def test_info_created_at_without_source_date_epoch(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "now.oxbak"
    before = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    assert_ok(oxbak("pack", src, "-o", out, env={"SOURCE_DATE_EPOCH": None}))
    after = dt.datetime.now(tz=dt.UTC)
    created = dt.datetime.strptime(str(info_json(out)["created_at"]), "%Y-%m-%dT%H:%M:%SZ")
    assert before <= created.replace(tzinfo=dt.UTC) <= after


def test_info_from_stdin(archive: Path) -> None:
    # From a pipe only the manifest can be read first: the scan's counts, status unknown.
    result = oxbak("info", "--json", "-", input=archive.read_bytes())
    assert_ok(result)
    piped = json.loads(result.stdout)
    from_file = info_json(archive)
    assert piped["partial"] is None and "status" not in piped
    del from_file["status"], from_file["partial"], piped["partial"]
    assert piped == from_file
    human = text(oxbak("info", "-", input=archive.read_bytes()).stdout)
    assert re.search(r"^partial:\s+unknown until verified", human, re.M), human


def test_info_on_a_non_archive(tmp_path: Path, command: Path) -> None:
    junk = tmp_path / "junk.oxbak"
    junk.write_bytes(b"hello world\n" * 100)
    assert_one_error(oxbak("info", junk))
    assert_one_error(oxbak("info", tmp_path / "missing.oxbak"))


# --------------------------------------------------------------------------- list


def _expected_rows(src: Path) -> list[dict[str, object]]:
    """What `list --json` must print for the tree at *src*, in archive order."""
    snap = snapshot(src)
    order = sorted(snap, key=lambda p: () if p == b"." else tuple(p.split(b"/")))
    first_of_inode: set[tuple[bytes, ...]] = set()
    rows: list[dict[str, object]] = []
    for rel in order:
        st = os.lstat(os.path.join(os.fsencode(src), rel))
        kind = snap[rel][0]
        row: dict[str, object] = {
            "path": "." if rel == b"." else display(rel),
            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "size": st.st_size if kind == "file" else 0,
            "mtime_ns": st.st_mtime_ns,
            "type": kind,
        }
        if kind == "symlink":
            row["target"] = os.fsdecode(os.readlink(os.path.join(os.fsencode(src), rel)))
        elif kind == "file":
            links = snap[rel][4]
            assert isinstance(links, tuple)
            if len(links) > 1:
                if links in first_of_inode:
                    first = min(links, key=lambda p: tuple(p.split(b"/")))
                    row.update(type="hardlink", size=0, target=display(first))
                first_of_inode.add(links)
        rows.append(row)
    return rows


def test_list_json(archive: Path, src: Path) -> None:
    result = oxbak("list", "--json", archive)
    assert_ok(result)
    assert result.stderr == b""
    rows = [json.loads(line) for line in text(result.stdout).splitlines()]
    expected = _expected_rows(src)
    assert [{k: row[k] for k in want} for row, want in zip(rows, expected, strict=True)] == expected
    # From the table of contents: owners, digests, ctime and inode as the scan saw them.
    root = os.fsencode(src)
    for row in rows:
        if "\\x" in row["path"]:
            # Not UTF-8: shown escaped (FORMAT.md §6), and carried losslessly beside it.
            raw = base64.b64decode(row["path_b64"])
            assert os.path.lexists(os.path.join(os.fsencode(src), raw)), raw
            continue
        rel = b"" if row["path"] == "." else os.fsencode(row["path"])
        st = os.lstat(os.path.join(root, rel) if rel else root)
        assert (row["uid"], row["gid"]) == (st.st_uid, st.st_gid)
        assert row["user"] == pwd.getpwuid(st.st_uid).pw_name
        assert row["ino"] == st.st_ino
        if row["type"] == "file":
            data = (src / os.fsdecode(rel)).read_bytes()
            assert row["digest"] == blake3.blake3(data).hexdigest()
        else:
            assert ("digest" in row) == (row["type"] != "dir")


def test_list_human(archive: Path, src: Path) -> None:
    result = oxbak("list", archive)
    assert_ok(result)
    assert result.stderr == b""
    lines = text(result.stdout).splitlines()
    expected = _expected_rows(src)
    assert len(lines) == len(expected)
    for line, row in zip(lines, expected, strict=True):
        m = re.fullmatch(
            r"(?P<kind>[-dlh])(?P<perm>[-rwx]{9}) (?P<owner>\S+/\S+) +(?P<size>\d+) "
            r"(?P<mtime>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z (?P<path>.+?)(?: -> (?P<target>.+))?",
            line,
        )
        assert m, line
        kind = {"-": "file", "d": "dir", "l": "symlink", "h": "hardlink"}[m["kind"]]
        assert kind == row["type"], line
        assert m["path"] == row["path"], line
        assert int(m["size"]) == row["size"], line
        mtime_ns = row["mtime_ns"]
        assert isinstance(mtime_ns, int)
        assert m["mtime"] == time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(mtime_ns // 1_000_000_000)
        )
        mode = int(str(row["mode"]), 8)
        perm = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
        assert m["perm"] == perm, line
        assert m["target"] == row.get("target"), line


def test_long_output_is_complete_in_a_file_and_a_pipe(tmp_path: Path) -> None:
    # The command ends with os._exit (no interpreter shutdown): everything it printed must
    # still be flushed, well past one buffer's worth.
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"entry-{i:05d}.json").write_bytes(b"{}")
    out = tmp_path / "many.oxbak"
    assert_ok(oxbak("pack", src, "-o", out))
    listing = tmp_path / "listing.txt"
    with listing.open("wb") as fh:
        assert subprocess.run([OXBAK, "list", "--json", str(out)], stdout=fh).returncode == 0
    piped = sh(f"{OXBAK} list --json {out} | cat")
    assert piped.returncode == 0
    for data in (listing.read_bytes(), piped.stdout):
        assert len(data) > 64 * 1024
        rows = [json.loads(line) for line in data.splitlines()]
        assert len(rows) == 3001 and rows[-1]["path"] == "entry-02999.json"


def test_list_from_stdin(archive: Path) -> None:
    # The same entries, owner names included: from a pipe they come from each member's
    # header (the TOC, which has them too, comes at the end).
    piped = text(oxbak("list", "-", input=archive.read_bytes()).stdout).splitlines()
    direct = text(oxbak("list", archive).stdout).splitlines()
    assert len(piped) == len(direct) > 10
    assert piped == direct
    st = archive.parent.stat()  # the tree packed belongs to whoever runs the tests
    owner = f"{pwd.getpwuid(st.st_uid).pw_name}/{grp.getgrgid(st.st_gid).gr_name}"
    assert all(line.split(" ", 2)[1] == owner for line in piped)


@pytest.mark.parametrize("as_json", [False, True])
def test_list_into_head_has_no_traceback(many_archive: Path, tmp_path: Path, as_json: bool) -> None:
    err, rc = tmp_path / "list.err", tmp_path / "list.rc"
    flag = "--json " if as_json else ""
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"{q(OXBAK)} list {flag}{q(many_archive)} 2>{q(err)} | head -1; "
            f"echo ${{PIPESTATUS[0]}} > {q(rc)}",
        ],
        capture_output=True,
        env=_env(),
        timeout=60,
    )
    assert result.returncode == 0
    lines = text(result.stdout).splitlines()
    assert len(lines) == 1
    assert (json.loads(lines[0])["path"] if as_json else lines[0].split()[-1]) == "."
    assert err.read_text() == ""  # neither a traceback nor "Exception ignored … BrokenPipe"
    assert int(rc.read_text()) == 141  # the pipe did break (the output exceeds its buffer)


# --------------------------------------------------------------------------- verify


def corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def test_verify_intact(archive: Path) -> None:
    result = oxbak("verify", archive)
    assert_ok(result)
    assert result.stdout == b""
    assert text(result.stderr).startswith("ok")
    data = json.loads(oxbak("verify", "--json", archive).stdout)
    assert data["ok"] is True and data["problems"] == []
    assert data["entries"] == 17


def test_verify_corrupt_byte_in_the_middle(archive: Path) -> None:
    corrupt(archive, archive.stat().st_size // 2)
    result = oxbak("verify", archive)
    assert result.returncode == 1
    assert result.stdout == b""
    err = text(result.stderr)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) >= 2
    assert all(ln.startswith("oxbak: problem: ") for ln in lines[:-1]), err
    assert lines[-1].startswith("oxbak: error: ") and "damaged" in lines[-1]

    as_json = oxbak("verify", "--json", archive)
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["ok"] is False
    assert isinstance(data["problems"], list) and data["problems"]
    assert all(isinstance(p, str) and p for p in data["problems"])


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.99])
def test_verify_truncated(archive: Path, keep: float) -> None:
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * keep)])
    result = oxbak("verify", archive)
    assert result.returncode == 1
    assert "Traceback" not in text(result.stderr)
    assert text(result.stderr).splitlines()[-1].startswith("oxbak: error: ")
    unpacked = oxbak("unpack", archive, archive.parent / "dest")
    assert_one_error(unpacked)
    assert not (archive.parent / "dest").exists()


def test_verify_from_stdin(archive: Path) -> None:
    assert_ok(oxbak("verify", "-", input=archive.read_bytes()))


# --------------------------------------------------------------------------- unpack


def test_unpack_into_new_dir(archive: Path, src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "dest"
    dest.parent.mkdir()
    result = oxbak("unpack", archive, dest)
    assert_ok(result)
    assert result.stdout == b""
    assert text(result.stderr).startswith("restored 17 entries")
    assert snapshot(dest) == snapshot(src)
    assert leftovers(dest.parent) == []


def test_unpack_json(archive: Path, tmp_path: Path) -> None:
    result = oxbak("unpack", "--json", archive, tmp_path / "dest")
    assert_ok(result)
    assert result.stderr == b""
    data = json.loads(result.stdout)
    assert data["dest"] == str(tmp_path / "dest")
    assert data["entries"] == 17 and data["partial"] is False


def test_unpack_into_existing_empty_dir(archive: Path, src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    assert_ok(oxbak("unpack", archive, dest))
    assert snapshot(dest) == snapshot(src)
    assert leftovers(tmp_path) == []


def _occupied(dest: Path) -> Path:
    (dest / "sub").mkdir(parents=True)
    (dest / "mine.txt").write_bytes(b"mine")
    (dest / "a").mkdir()
    (dest / "a" / "f.txt").write_bytes(b"old f")
    (dest / "sub" / "other.txt").write_bytes(b"other")
    set_mtimes(dest, base_ns=1_500_000_000_000_000_001)
    return dest


def test_unpack_into_non_empty_dir_is_refused(archive: Path, tmp_path: Path) -> None:
    dest = _occupied(tmp_path / "dest")
    before = snapshot(dest)
    line = assert_one_error(oxbak("unpack", archive, dest))
    assert "not empty" in line
    assert snapshot(dest) == before
    assert leftovers(tmp_path) == []


def test_unpack_replace(archive: Path, src: Path, tmp_path: Path) -> None:
    dest = _occupied(tmp_path / "dest")
    assert_ok(oxbak("unpack", "--replace", archive, dest))
    assert not (dest / "mine.txt").exists()
    assert not (dest / "sub" / "other.txt").exists()
    assert snapshot(dest) == snapshot(src)
    assert leftovers(tmp_path) == []


def test_unpack_merge(archive: Path, src: Path, tmp_path: Path) -> None:
    dest = _occupied(tmp_path / "dest")
    assert_ok(oxbak("unpack", "--merge", archive, dest))
    assert (dest / "mine.txt").read_bytes() == b"mine"
    assert (dest / "sub" / "other.txt").read_bytes() == b"other"
    assert (dest / "a" / "f.txt").read_bytes() == (src / "a" / "f.txt").read_bytes()
    merged, source = snapshot(dest), snapshot(src)
    for rel, value in source.items():
        if value[0] != "dir":
            assert merged[rel] == value, rel
    assert set(merged) - set(source) == {b"mine.txt", b"sub/other.txt"}
    assert leftovers(tmp_path) == []


def test_unpack_replace_and_merge_is_a_usage_error(archive: Path, tmp_path: Path) -> None:
    dest = _occupied(tmp_path / "dest")
    before = snapshot(dest)
    assert_usage_error(oxbak("unpack", "--replace", "--merge", archive, dest), "--merge")
    assert snapshot(dest) == before


def test_unpack_refuses_external_symlink(src: Path, tmp_path: Path) -> None:
    os.symlink("../outside", src / "ext")
    archive = tmp_path / "ext.oxbak"
    assert_ok(oxbak("pack", src, "-o", archive))
    dest = tmp_path / "dest"
    line = assert_one_error(oxbak("unpack", archive, dest))
    assert "'ext'" in line and "../outside" in line
    assert not dest.exists()
    assert leftovers(tmp_path) == []

    assert_ok(oxbak("unpack", "--allow-external-symlinks", archive, dest))
    assert os.readlink(dest / "ext") == "../outside"
    assert snapshot(dest) == snapshot(src)


def test_unpack_missing_archive(tmp_path: Path, command: Path) -> None:
    assert_one_error(oxbak("unpack", tmp_path / "missing.oxbak", tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def test_recover_with_nothing_to_do(tmp_path: Path, command: Path) -> None:
    result = oxbak("recover", tmp_path / "dest")
    assert_ok(result)
    assert result.stdout == b""
    assert "nothing to recover" in text(result.stderr)


# --------------------------------------------------------------------------- reproducibility


def test_same_tree_twice_is_byte_identical(src: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.oxbak", tmp_path / "two.oxbak"
    assert_ok(oxbak("pack", src, "-o", one, env={"SOURCE_DATE_EPOCH": EPOCH}))
    assert_ok(oxbak("pack", src, "-o", two, env={"SOURCE_DATE_EPOCH": EPOCH}))
    assert one.read_bytes() == two.read_bytes()


def test_thread_count_does_not_change_the_bytes(tmp_path: Path, command: Path) -> None:
    # Enough compressible data for zstd to cut several multithreaded jobs at level 1.
    root = tmp_path / "src"
    root.mkdir()
    rng = random.Random(7)
    words = [rng.randbytes(rng.randrange(3, 12)).hex().encode() for _ in range(4000)]
    for i in range(3):
        (root / f"part{i}.txt").write_bytes(b" ".join(rng.choices(words, k=300_000)))
    set_mtimes(root, 1_600_000_000_123_456_789)
    outs = []
    for threads in ("1", "2", "3"):
        out = tmp_path / f"t{threads}.oxbak"
        assert_ok(
            oxbak(
                "pack",
                root,
                "-o",
                out,
                "--level",
                "1",
                "--threads",
                threads,
                env={"SOURCE_DATE_EPOCH": EPOCH},
            )
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_streamed_archive_is_reproducible_too(src: Path) -> None:
    env: dict[str, str | None] = {"SOURCE_DATE_EPOCH": EPOCH}
    one = oxbak("pack", src, "-o", "-", env=env)
    two = oxbak("pack", src, "-o", "-", "--threads", "1", env=env)
    assert_ok(one)
    assert_ok(two)
    assert one.stdout == two.stdout


# --------------------------------------------------------------------------- progress, --quiet


def on_terminal(
    argv: list[str], *, columns: int = 120
) -> tuple[int, bytes, str]:
    """Run *argv* with stderr on a pseudo-terminal *columns* wide (stdout a pipe).

    Returns the exit status, stdout, and every byte the terminal received, as text.
    """
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            received.append(chunk)

    try:
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, env=_env()
        ) as proc:
            os.close(terminal)
            terminal = -1
            reader = threading.Thread(target=drain)
            reader.start()
            stdout, _ = proc.communicate(timeout=60)
            reader.join(timeout=60)
        status = proc.returncode
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    return status, stdout, b"".join(received).decode()


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after receiving *raw*.

    ``\r`` returns to the start of the line, ``ESC [ K`` erases from there to its end,
    ``\n`` starts the next line; other characters overwrite what is under the cursor.
    """
    lines: list[str] = []
    line: list[str] = []
    col = 0
    at = 0
    while at < len(raw):
        if raw.startswith("\x1b[K", at):
            del line[col:]
            at += 3
            continue
        char = raw[at]
        at += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col : col + 1] = [char]
            col += 1
    if line:
        lines.append("".join(line))
    return lines


def _bar(label: str) -> re.Pattern[str]:
    """A progress line of *label*: bar, percentage, bytes done/total, rate and ETA (known
    or not yet)."""
    return re.compile(
        rf"{label} \[[#.]+\] +\d+%  [\d.]+/[\d.]+ [KMGT]?B  (?:[\d.]+|--) [KMGT]?B/s  "
        rf"ETA (?:\d+:\d\d|--:--)"
    )


#: A rate and an ETA that are known.
_RATE_AND_ETA = re.compile(r"  [\d.]+ [KMGT]?B/s  ETA \d+:\d\d")


def test_progress_bar_shows_rate_and_eta_and_messages_start_their_own_line(
    tmp_path: Path, command: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-big.bin").write_bytes(os.urandom(24 << 20))
    secret = src / "zz-secret.txt"  # read after a-big.bin: its warning comes mid-run
    secret.write_bytes(b"secret\n")
    secret.chmod(0)
    out = tmp_path / "a.oxbak"
    argv = [str(OXBAK), "pack", str(src), "-o", str(out), "--level", "1"]
    prefix = _without_read_override()
    status, _, raw = on_terminal(
        [*prefix, " ".join(shlex.quote(a) for a in argv)] if prefix else argv
    )
    assert status == 3, raw
    assert _bar("packing").search(raw) and _RATE_AND_ETA.search(raw), raw
    assert " 100%  " in raw  # the bar reached the end of the work
    warning = "oxbak: warning: file 'zz-secret.txt' could not be read"
    assert _bar("packing").search(raw[: raw.index(warning)]), "the bar was up before it"
    # The bar is erased before each message and at the end: what stays on the terminal
    # is the messages, each on a line of its own, nothing glued before them.
    lines = [line for line in screen(raw) if line]
    assert any(line.startswith(warning) for line in lines), lines
    assert all(line.startswith(("oxbak: ", "packed ")) for line in lines), lines
    assert lines[-2].startswith("packed 2 entries"), lines

    for cmd, label in (("verify", "verifying"), ("unpack", "unpacking")):
        more = [str(tmp_path / "dest")] if cmd == "unpack" else []
        status, _, raw = on_terminal([str(OXBAK), cmd, str(out), *more])
        assert status == (3 if cmd == "verify" else 0), raw
        assert _bar(label).search(raw) and _RATE_AND_ETA.search(raw), raw
        assert " 100%  " in raw, raw
        lines = [line for line in screen(raw) if line]
        assert all(line.startswith(("oxbak: ", "ok: ", "restored ")) for line in lines), lines


def test_quiet_shows_no_bar_and_no_notes_but_warnings(tmp_path: Path, command: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(4 << 20))
    out = tmp_path / "a.oxbak"
    pack = [str(OXBAK), "pack", str(src), "-o", str(out), "--exclude", "no-such-*"]
    status, _, raw = on_terminal(pack)
    assert status == 0 and "packing [" in raw and "packed " in raw, raw  # without -q
    out.unlink()
    status, _, raw = on_terminal([*pack, "-q"])
    assert status == 0, raw
    assert raw == "oxbak: warning: exclude pattern 'no-such-*' matched nothing\r\n"
    status, _, raw = on_terminal([str(OXBAK), "verify", "--quiet", str(out)])
    assert (status, raw) == (0, "")
    status, _, raw = on_terminal([str(OXBAK), "unpack", "-q", str(out), str(tmp_path / "d")])
    assert (status, raw) == (0, "")
    assert (tmp_path / "d" / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
    status, _, raw = on_terminal([str(OXBAK), "recover", "-q", str(tmp_path / "d")])
    assert (status, raw) == (0, "")
    # Warnings and errors are not informational: they still show.
    status, _, raw = on_terminal([str(OXBAK), "verify", "-q", str(tmp_path / "nope.oxbak")])
    assert status == 1 and raw.startswith("oxbak: error: ") and raw.count("\n") == 1, raw


# --------------------------------------------------------------------------- debug


def test_traceback_only_with_oxbak_debug(tmp_path: Path, command: Path) -> None:
    missing = tmp_path / "nope"
    plain = oxbak("pack", missing, "-o", tmp_path / "x.oxbak")
    assert_one_error(plain)
    debug = oxbak("pack", missing, "-o", tmp_path / "x.oxbak", env={"OXBAK_DEBUG": "1"})
    assert debug.returncode == 1
    err = text(debug.stderr)
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("oxbak: error: ")
    flag = oxbak("--debug", "pack", missing, "-o", tmp_path / "x.oxbak")
    assert flag.returncode == 1
    assert "Traceback (most recent call last)" in text(flag.stderr)
    zero = oxbak("pack", missing, "-o", tmp_path / "x.oxbak", env={"OXBAK_DEBUG": "0"})
    assert_one_error(zero)
