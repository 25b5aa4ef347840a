"""Encryption to age recipients: the envelope around an archive (oxbak.envelope).

Round trips with X25519, ssh-ed25519 and ssh-rsa keys, several recipients each opening
the archive alone, files and pipes; every way an envelope can fail to open (cut short,
a byte changed in its payload or header, a wrong key, no key, a file that is not a key)
is one line, exit 1, DEST untouched and no plaintext left anywhere; ``info`` without a
key says that it is encrypted and to what kinds of keys, and nothing more.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyrage
import pytest

import oxbak
from oxbak.envelope import AGE_MAGIC, ARMOR_BEGIN
from oxbak.errors import EnvelopeError, IdentityError, OutputError, RecipientError
from tools import require_tool
from treeutil import Node, build, snapshot

OXBAK = Path(sys.executable).parent / "oxbak"

TREE = {
    b"seeds": Node("dir", children={b"000001.json": Node("file", data=b'{"a": 1}\n')}),
    b"big.bin": Node("file", data=os.urandom(600_000)),  # several age chunks of 64 KiB
    b"link": Node("symlink", target=b"seeds/000001.json"),
    b"hard": Node("hardlink", target=b"seeds/000001.json"),
    b"empty": Node("dir", children={}),
}


# --------------------------------------------------------------------------- helpers


class Key:
    """An identity file and the public key that goes with it."""

    def __init__(self, identity: Path, recipient: str, kind: str) -> None:
        self.identity = identity
        self.recipient = recipient
        self.kind = kind


def age_key(directory: Path, name: str = "key.txt") -> Key:
    ident = pyrage.x25519.Identity.generate()
    path = directory / name
    path.write_text(f"# created by a test\n# public key: {ident.to_public()}\n{ident}\n")
    return Key(path, str(ident.to_public()), "X25519")


def ssh_key(directory: Path, kind: str, passphrase: str = "") -> Key:
    require_tool("ssh-keygen")
    path = directory / f"id_{kind}"
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *extra, "-N", passphrase, "-C", "test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    recipient = (directory / f"id_{kind}.pub").read_text().strip()
    return Key(path, recipient, f"ssh-{kind}")


def run(
    *args: str | os.PathLike[str], stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environ = dict(os.environ)
    environ.pop("OXBAK_DEBUG", None)
    environ.update(env or {})
    return subprocess.run(
        [str(OXBAK), *map(str, args)],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=environ,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert result.returncode == 0, (result.returncode, result.stderr.decode(errors="replace"))
    return result


def one_error(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oxbak: error: "), err
    return lines[0]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    build(str(root), TREE)
    return root


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return age_key(tmp_path)


@pytest.fixture
def sealed(src: Path, key: Key, tmp_path: Path) -> Path:
    out = tmp_path / "state.oxbak.age"
    oxbak.pack(src, out, recipients=[key.recipient])
    return out


# --------------------------------------------------------------------------- round trips


def test_pack_to_a_recipient_writes_an_age_file_every_reader_opens(
    src: Path, sealed: Path, key: Key, tmp_path: Path
) -> None:
    data = sealed.read_bytes()
    assert data.startswith(AGE_MAGIC)
    assert b"seeds" not in data and TREE[b"big.bin"].data[:64] not in data  # type: ignore[index]
    ids = [key.identity]
    # Every reading function of the API takes the identities.
    assert oxbak.read_manifest(sealed, identities=ids).totals.files == 2
    info = oxbak.read_info(sealed, identities=ids)
    assert info.envelope is not None and info.envelope.stanzas == ("X25519",)
    assert oxbak.verify(sealed, identities=ids).ok
    names = [e.name for e in oxbak.list_entries(sealed, identities=ids)]
    assert names == [".", "big.bin", "empty", "hard", "link", "seeds", "seeds/000001.json"]
    out = io.BytesIO()
    oxbak.cat(sealed, "hard", out, identities=ids)
    assert out.getvalue() == b'{"a": 1}\n'
    with pytest.raises(oxbak.OxbakError, match="is a hardlink; cat its target"):
        oxbak.cat(sealed, "seeds/000001.json", io.BytesIO(), identities=ids)
    assert list(oxbak.diff(sealed, src, content=True, identities=ids)) == []
    oxbak.unpack(sealed, tmp_path / "only", only=["seeds", "hard"], identities=ids)
    assert sorted(os.listdir(tmp_path / "only")) == ["hard", "seeds"]
    with pytest.raises(oxbak.OxbakError, match=r"which this selection leaves out \(add it\)"):
        oxbak.unpack(sealed, tmp_path / "only2", only=["seeds"], identities=ids)
    assert not (tmp_path / "only2").exists()
    oxbak.unpack(sealed, tmp_path / "restored", identities=ids)
    assert snapshot(str(tmp_path / "restored")) == snapshot(str(src))
    # One key or one identity file alone is taken as such, not as a sequence of letters.
    oxbak.pack(src, tmp_path / "one.oxbak.age", recipients=key.recipient)  # type: ignore[arg-type]
    assert oxbak.verify(tmp_path / "one.oxbak.age", identities=str(key.identity)).ok  # type: ignore[arg-type]
    # The same from a file object that is not seekable in plaintext space.
    with open(sealed, "rb") as fh:
        oxbak.unpack(fh, tmp_path / "again", identities=ids)
    assert snapshot(str(tmp_path / "again")) == snapshot(str(src))


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_round_trip_with_an_ssh_key(src: Path, tmp_path: Path, kind: str) -> None:
    k = ssh_key(tmp_path, kind)
    out = tmp_path / "a.oxbak.age"
    ok(run("pack", src, "-o", out, "--recipient", k.recipient))
    assert out.read_bytes().startswith(AGE_MAGIC)
    assert f"-> {k.kind} ".encode() in out.read_bytes()[:2000]
    ok(run("unpack", out, tmp_path / "r", "--identity", k.identity))
    assert snapshot(str(tmp_path / "r")) == snapshot(str(src))


def test_several_recipients_each_identity_alone_opens_it(src: Path, tmp_path: Path) -> None:
    keys = [age_key(tmp_path), ssh_key(tmp_path, "ed25519"), ssh_key(tmp_path, "rsa")]
    # Two on the command line, one from a recipients file with a comment and a blank line.
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# the backup host\n\n{keys[2].recipient}\n")
    out = tmp_path / "a.oxbak.age"
    ok(
        run(
            "pack", src, "-o", out, "-r", keys[0].recipient, "-r", keys[1].recipient,
            "-R", rfile,
        )
    )
    info = ok(run("info", out)).stdout.decode()
    assert "3 recipients: X25519, ssh-ed25519, ssh-rsa" in info
    for n, k in enumerate(keys):
        dest = tmp_path / f"r{n}"
        ok(run("unpack", out, dest, "-i", k.identity))
        assert snapshot(str(dest)) == snapshot(str(src))


def test_default_name_ends_oxbak_age_and_an_explicit_name_is_kept(
    src: Path, key: Key, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = ok(subprocess.run(
        [str(OXBAK), "pack", str(src), "-r", key.recipient], cwd=work, capture_output=True
    ))
    (made,) = os.listdir(work)
    assert made.startswith("src-") and made.endswith(".oxbak.age"), made
    assert made in result.stderr.decode()
    assert "encrypted to 1 recipient" in result.stderr.decode()
    ok(run("pack", src, "-r", key.recipient, "-o", work / "plain-name.bin"))
    assert (work / "plain-name.bin").read_bytes().startswith(AGE_MAGIC)


def test_pipe_from_pack_to_unpack(src: Path, key: Key, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    script = (
        f'"{OXBAK}" pack "{src}" --recipient {key.recipient} -o - | '
        f'"{OXBAK}" unpack - "{dest}" --identity "{key.identity}"'
    )
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(str(dest)) == snapshot(str(src))


def test_an_armored_envelope_is_read(src: Path, key: Key, tmp_path: Path) -> None:
    plain = tmp_path / "a.oxbak"
    oxbak.pack(src, plain)
    recipient = pyrage.x25519.Recipient.from_str(key.recipient)
    armored = tmp_path / "a.oxbak.asc"
    armored.write_bytes(pyrage.encrypt(plain.read_bytes(), [recipient], armored=True))
    assert armored.read_bytes().startswith(ARMOR_BEGIN)
    assert "age (armored), 1 recipient: X25519" in ok(run("info", armored)).stdout.decode()
    ok(run("unpack", armored, tmp_path / "r", "-i", key.identity))
    assert snapshot(str(tmp_path / "r")) == snapshot(str(src))


def test_an_unencrypted_archive_ignores_identities(src: Path, key: Key, tmp_path: Path) -> None:
    plain = tmp_path / "a.oxbak"
    oxbak.pack(src, plain)
    ok(run("unpack", plain, tmp_path / "r", "-i", key.identity))
    assert "encrypted" not in ok(run("info", plain)).stdout.decode()


# --------------------------------------------------------------------------- info without a key


def test_info_without_a_key_says_encrypted_and_the_stanza_types_only(
    src: Path, tmp_path: Path
) -> None:
    keys = [age_key(tmp_path), ssh_key(tmp_path, "ed25519")]
    out = tmp_path / "a.oxbak.age"
    oxbak.pack(src, out, recipients=[k.recipient for k in keys], labels={"secret": "label"})
    result = ok(run("info", out))
    text = result.stdout.decode()
    assert text.startswith("encrypted:     age, 2 recipients: X25519, ssh-ed25519\n")
    for hidden in ("format", "source", "entries", "label", "secret", "src"):
        assert hidden not in text.replace("--identity", ""), text
    doc = ok(run("info", out, "--json")).stdout
    assert doc.strip() == (
        b'{"encrypted":true,"envelope":{"armored":false,"format":"age",'
        b'"recipients":["X25519","ssh-ed25519"]}}'
    )
    # From a pipe too, and with the key: the envelope first, then the manifest.
    assert ok(run("info", "-", stdin=out.read_bytes())).stdout.decode() == text
    full = ok(run("info", out, "-i", keys[1].identity)).stdout.decode()
    assert full.startswith("encrypted:     age, 2 recipients: X25519, ssh-ed25519\nformat:")
    assert "secret=label" in full


def test_library_says_what_it_can_without_a_key(sealed: Path) -> None:
    with pytest.raises(IdentityError) as caught:
        oxbak.read_info(sealed)
    assert caught.value.envelope is not None
    assert caught.value.envelope.stanzas == ("X25519",)
    assert str(sealed) in str(caught.value)


# --------------------------------------------------------------------------- failures


def _damaged(sealed: Path, how: str) -> bytes:
    data = bytearray(sealed.read_bytes())
    header_end = data.index(b"\n---") + 1
    if how == "truncated":
        return bytes(data[: len(data) // 2])
    if how == "truncated-at-chunk":  # exactly after the first 64 KiB chunk: age says so
        return bytes(data[: data.index(b"\n", header_end) + 1 + 16 + 65536 + 16])
    if how == "header-cut":
        return bytes(data[: header_end - 10])
    if how == "flipped-payload":
        data[len(data) * 2 // 3] ^= 0x01
    elif how == "changed-header-mac":  # another valid base64 character: a wrong MAC
        data[header_end + 6] = ord("A") if data[header_end + 6] != ord("A") else ord("B")
    elif how == "garbled-header":  # not base64 at all: a header that does not parse
        data[header_end + 6] = ord("*")
    elif how == "flipped-nonce":
        data[data.index(b"\n", header_end) + 3] ^= 0x01
    elif how == "trailing":
        data += b"\0"
    return bytes(data)


DAMAGE = [
    "truncated",
    "truncated-at-chunk",
    "header-cut",
    "flipped-payload",
    "changed-header-mac",
    "garbled-header",
    "flipped-nonce",
    "trailing",
]


def _leftovers(directory: Path, before: set[str]) -> set[str]:
    return set(os.listdir(directory)) - before


@pytest.mark.parametrize("pipe", [False, True], ids=["file", "pipe"])
@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_envelope_is_one_line_and_changes_nothing(
    sealed: Path, key: Key, tmp_path: Path, how: str, pipe: bool
) -> None:
    bad = tmp_path / "bad.oxbak.age"
    bad.write_bytes(_damaged(sealed, how))
    area = tmp_path / "area"
    dest = area / "dest"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_bytes(b"the old tree\n")
    before = snapshot(str(dest))
    temp = tmp_path / "tmp"
    temp.mkdir()
    args = ["unpack", "-" if pipe else bad, dest, "--replace", "-i", key.identity]
    result = run(*args, stdin=bad.read_bytes() if pipe else None, env={"TMPDIR": str(temp)})
    line = one_error(result)
    assert ("standard input" if pipe else str(bad)) in line
    assert "envelope" in line or "header" in line, line
    assert snapshot(str(dest)) == before
    assert os.listdir(area) == ["dest"], "a staging directory was left"
    assert os.listdir(temp) == []
    # verify finds the same damage; it is damage, not a key problem.
    with pytest.raises(EnvelopeError):
        oxbak.unpack(bad, tmp_path / "lib", identities=[key.identity])
    assert not (tmp_path / "lib").exists()
    report = oxbak.verify(bad, identities=[key.identity])
    assert not report.ok
    assert "envelope" in report.problems[0] or "header" in report.problems[0], report.problems


def _not_a_key(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a key\n")
    return path


def _protected_ssh_key(tmp_path: Path) -> Path:
    return ssh_key(tmp_path, "ed25519", passphrase="secret words").identity


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong-key", "none of the identities given can decrypt it (it is encrypted to X25519)"),
        ("no-key", "is encrypted (age, 1 recipient: X25519); give the key with --identity"),
        ("not-a-key", "line 1: not an age secret key"),
        ("missing-file", "cannot read identity file"),
        ("empty-file", "holds no identity"),
        ("protected-ssh-key", "protected by a passphrase"),
        ("public-key-as-identity", "not an age secret key"),
    ],
)
def test_a_key_that_does_not_open_it_is_one_line_and_changes_nothing(
    sealed: Path, key: Key, tmp_path: Path, case: str, expected: str
) -> None:
    keys = {
        "wrong-key": lambda: [age_key(tmp_path, "other.txt").identity],
        "no-key": lambda: [],
        "not-a-key": lambda: [_not_a_key(tmp_path)],
        "missing-file": lambda: [tmp_path / "nowhere.txt"],
        "empty-file": lambda: [tmp_path / "empty.txt"],
        "protected-ssh-key": lambda: [_protected_ssh_key(tmp_path)],
        "public-key-as-identity": lambda: [Path(str(key.identity) + ".pub")],
    }
    (tmp_path / "empty.txt").write_text("# nothing\n")
    Path(str(key.identity) + ".pub").write_text(key.recipient + "\n")
    identities = keys[case]()
    area = tmp_path / "area"
    area.mkdir()
    for command in (["unpack", sealed, area / "dest"], ["verify", sealed], ["list", sealed]):
        args = [*command, *[a for i in identities for a in ("-i", i)]]
        line = one_error(run(*args))
        assert expected in line, line
        if case in ("wrong-key", "no-key"):
            assert str(sealed) in line
    assert os.listdir(area) == []
    with pytest.raises(IdentityError):
        oxbak.unpack(sealed, area / "dest", identities=identities)
    assert os.listdir(area) == []


def test_a_passphrase_envelope_is_named_as_such(src: Path, tmp_path: Path) -> None:
    plain = tmp_path / "a.oxbak"
    oxbak.pack(src, plain)
    sealed = tmp_path / "a.oxbak.age"
    sealed.write_bytes(pyrage.passphrase.encrypt(plain.read_bytes(), "correct horse"))
    assert "1 recipient: scrypt" in ok(run("info", sealed)).stdout.decode()
    line = one_error(run("unpack", sealed, tmp_path / "r", "-i", _not_a_key(tmp_path)))
    assert "encrypted with a passphrase" in line and "age -d" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "recipient, expected",
    [
        ("age1notakey", "is not valid"),
        ("ssh-dss AAAAB3NzaC1kc3M", "is not an age public key"),
        ("AGE-SECRET-KEY-1QQQ", "not a secret key"),
    ],
)
def test_a_bad_recipient_is_one_line_and_writes_nothing(
    src: Path, tmp_path: Path, recipient: str, expected: str
) -> None:
    out = tmp_path / "a.oxbak.age"
    line = one_error(run("pack", src, "-o", out, "-r", recipient))
    assert expected in line, line
    assert os.listdir(tmp_path) == ["src"]
    with pytest.raises(RecipientError):
        oxbak.pack(src, out, recipients=[recipient])
    missing = one_error(run("pack", src, "-o", out, "-R", tmp_path / "none.txt"))
    assert "cannot read recipients file" in missing
    assert os.listdir(tmp_path) == ["src"]


# --------------------------------------------------------------------------- threads and sinks


def _age_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "oxbak-age"]


def test_reading_part_of_it_stops_the_decryption(key: Key, tmp_path: Path) -> None:
    # More than the pieces waiting between the threads: decryption is still under way.
    tree = tmp_path / "tree"
    build(str(tree), {b"a.bin": Node("file", data=os.urandom(12 << 20))})
    sealed = tmp_path / "big.oxbak.age"
    oxbak.pack(tree, sealed, recipients=[key.recipient])
    entries = oxbak.list_entries(sealed, identities=[key.identity])
    assert next(entries).name == "."
    assert _age_threads()
    entries.close()
    assert _age_threads() == []


class _FailingSink(io.RawIOBase):
    """A stream that takes *room* bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        if len(view) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(view)
        return len(view)


def test_a_sink_that_fails_is_an_output_error_and_stops_the_encryption(
    src: Path, key: Key
) -> None:
    with pytest.raises(OutputError, match="No space left on device"):
        oxbak.pack(src, _FailingSink(100_000), recipients=[key.recipient])  # type: ignore[arg-type]
    assert _age_threads() == []
