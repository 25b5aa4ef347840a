"""Archives in object storage, ``s3://BUCKET/KEY``, against a real S3-compatible server.

The server is SeaweedFS (``weed mini``, tests/s3server.py), started once for the session on
loopback, checking signatures. Nothing here is mocked: every command runs as a real
process or through the library against that server.

- Every command takes an S3 URL; a tree goes there and back unchanged, and the object
  holds the same bytes a file would.
- Reading fetches only what a command needs (bytes and requests counted), and a whole
  read fetches each byte once.
- The object appears only complete: an error, SIGINT or SIGTERM aborts the upload; after
  ``kill -9`` at any point of the upload there is no object, and ``abort-uploads`` finds
  and removes what is left.
- No clobber: an object that exists, or appears while a pack uploads (two packs racing for
  one key), is never overwritten without ``--force``.
- A damaged object is refused and nothing is committed; every fault is one line.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import oxbak
from oxbak.compress import SeekTable
from oxbak.errors import InputError, OutputError, OutputExistsError
from oxbak.locations import open_output
from s3server import S3Server
from tools import sigint_default, wait_until
from treeutil import set_mtimes

OXBAK = Path(sys.executable).parent / "oxbak"
MiB = 1 << 20

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:botocore.*")


# --------------------------------------------------------------------------- helpers


def run(
    s3: S3Server, *args: str | os.PathLike[str], **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(OXBAK), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=s3.env(**env),
        timeout=180,
    )


def spawn(s3: S3Server, *args: str | os.PathLike[str], **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(OXBAK), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=s3.env(**env),
        preexec_fn=sigint_default(),
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert result.returncode == 0, (result.returncode, result.stderr.decode(errors="replace"))
    return result


def one_error(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    err = result.stderr.decode(errors="replace")
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oxbak: error: "), err
    return lines[0]


def new_key(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}.oxbak"


def exists(s3: S3Server, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=s3.bucket, Key=key)
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise
    return True


def get(s3: S3Server, key: str) -> bytes:
    data: bytes = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    return data


def put(s3: S3Server, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)


def uploads(s3: S3Server, key: str) -> list[dict[str, Any]]:
    """Incomplete multipart uploads to exactly *key*."""
    listing = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=key)
    return [u for u in listing.get("Uploads", []) if u["Key"] == key]


#: parts_uploaded: the upload was there and is gone (completed, or aborted).
GONE = 1 << 30


def parts_uploaded(client: Any, bucket: str, key: str) -> int:
    """Parts of the (one) incomplete upload to *key*; -1 while there is none yet."""
    import botocore.exceptions

    listing = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    found = [u for u in listing.get("Uploads", []) if u["Key"] == key]
    if not found:
        return -1
    try:
        parts = client.list_parts(Bucket=bucket, Key=key, UploadId=found[0]["UploadId"])
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchUpload":
            return GONE
        raise
    return len(parts.get("Parts", []))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    snap: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                snap[rel] = ("l", os.readlink(path), st.st_mtime_ns)
            elif path.is_dir():
                snap[rel] = ("d", st.st_mode, st.st_mtime_ns)
            else:
                snap[rel] = ("f", st.st_mode, st.st_mtime_ns, st.st_nlink, path.read_bytes())
    return snap


def make_tree(root: Path, *, seed: int = 0, big: int = 0, small: int = 40, noise: int = 0) -> Path:
    """Small files, a symlink, a hardlink, an empty dir, and *big* MiB of random data.

    Each small file holds text and *noise* random bytes (which do not compress).
    """
    rng = random.Random(seed)
    (root / "docs" / "notes").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(small):
        text = f"seed {seed} file {i}\n".encode() * (i % 50 + 1)
        (root / "docs" / f"f{i:04}.txt").write_bytes(text + rng.randbytes(noise))
    (root / "docs" / "notes" / "a.json").write_bytes(b'{"a": %d}\n' % seed)
    os.symlink("docs/notes/a.json", root / "link")
    os.link(root / "docs" / "notes" / "a.json", root / "hard")
    if big:
        (root / "blobs").mkdir()
        for n in range(0, big, 8):
            with open(root / "blobs" / f"b{n:03}.bin", "wb") as fh:
                fh.write(rng.randbytes(min(8, big - n) * MiB))
    set_mtimes(root, 1_700_000_000_000_000_000 + seed * 1_000_000_000_000)
    return root


@pytest.fixture
def s3env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The library, in this process, pointed at the server by the standard AWS variables."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("OXBAK_S3_PART_SIZE", raising=False)
    for name, value in s3.aws_env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("s3small") / "state")


@pytest.fixture(scope="module")
def large_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB that does not compress in large files, and 3 MiB more in 1,500 small ones."""
    return make_tree(
        tmp_path_factory.mktemp("s3large") / "state", seed=7, big=24, small=1500, noise=2000
    )


# --------------------------------------------------------------------------- the server


def test_the_server_checks_signatures(s3: S3Server) -> None:
    """Without this, the wrong-credentials tests below would prove nothing."""
    import botocore.exceptions

    for overrides, code in (
        ({"secret_key": s3.secret_key + "x"}, "SignatureDoesNotMatch"),
        ({"access_key": "nobody"}, "InvalidAccessKeyId"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            s3.client(**overrides).list_objects_v2(Bucket=s3.bucket)
        assert caught.value.response["Error"]["Code"] == code
    s3.client().list_objects_v2(Bucket=s3.bucket)


# --------------------------------------------------------------------------- round trip


def test_every_command_takes_an_s3_url(s3: S3Server, small_tree: Path, tmp_path: Path) -> None:
    url = s3.url(new_key())
    packed = ok(run(s3, "pack", small_tree, "-o", url))
    assert url in packed.stderr.decode()

    info = ok(run(s3, "info", url)).stdout.decode()
    assert "entries:       47 (41 files, 4 dirs, 1 symlinks, 1 hardlinks)" in info
    assert "partial:       no" in info  # from the TOC: read at random, not streamed

    listing = ok(run(s3, "list", url)).stdout.decode()
    assert listing.count("\n") == 47 and "docs/notes/a.json" in listing
    assert (
        ok(run(s3, "cat", url, "docs/f0003.txt")).stdout
        == (small_tree / "docs" / "f0003.txt").read_bytes()
    )
    assert ok(run(s3, "diff", url, small_tree)).stdout == b""
    ok(run(s3, "verify", url))

    dest = tmp_path / "restored"
    ok(run(s3, "unpack", url, dest))
    assert snapshot(dest) == snapshot(small_tree)

    only = tmp_path / "only"
    ok(run(s3, "unpack", url, only, "--only", "docs/notes"))
    assert sorted(snapshot(only)) == ["docs", "docs/notes", "docs/notes/a.json"]


@pytest.mark.tools("age-keygen")
def test_encryption_and_object_storage_compose(
    s3: S3Server, small_tree: Path, tmp_path: Path
) -> None:
    """pack --recipient -o s3://… then unpack s3://… --identity: only ciphertext is
    uploaded, and every reading command opens it with the key (and says what it can
    without)."""
    key = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    url = s3.url(new_key() + ".oxbak.age")
    ok(run(s3, "pack", small_tree, "-r", public, "-o", url))
    stored = get(s3, url.split("/", 3)[3])
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert b"docs/notes/a.json" not in stored and b"manifest.json" not in stored

    assert "encrypted:" in ok(run(s3, "info", url)).stdout.decode()
    refused = one_error(run(s3, "list", url))
    assert "give the key with --identity FILE" in refused
    listing = ok(run(s3, "list", url, "--identity", key)).stdout.decode()
    assert listing.count("\n") == 47
    assert (
        ok(run(s3, "cat", url, "docs/f0003.txt", "-i", key)).stdout
        == (small_tree / "docs" / "f0003.txt").read_bytes()
    )
    ok(run(s3, "verify", url, "-i", key))
    dest = tmp_path / "restored"
    ok(run(s3, "unpack", url, dest, "--identity", key))
    assert snapshot(dest) == snapshot(small_tree)


def test_the_same_tree_gives_the_same_bytes_on_s3_as_in_a_file(
    s3env: S3Server, large_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local.oxbak"
    oxbak.pack(large_tree, local)
    # Parts of the smallest size S3 takes: the archive spans several.
    monkeypatch.setenv("OXBAK_S3_PART_SIZE", "5")
    key = new_key()
    result = oxbak.pack(large_tree, s3env.url(key), threads=1)
    data = get(s3env, key)
    assert len(data) > 10 * MiB
    assert data == local.read_bytes()
    assert result.bytes_out == len(data)
    assert result.output == s3env.url(key)


def test_endpoint_url_option_wins_over_the_environment(s3: S3Server, small_tree: Path) -> None:
    url = s3.url(new_key())
    dead = "http://127.0.0.1:9"  # the discard port: nothing answers S3 there
    ok(run(s3, "pack", small_tree, "-o", url, "--endpoint-url", s3.endpoint, AWS_ENDPOINT_URL=dead))
    for command in (["info", url], ["list", url], ["verify", url], ["cat", url, "hard"]):
        ok(run(s3, *command, "--endpoint-url", s3.endpoint, AWS_ENDPOINT_URL=dead))
    line = one_error(run(s3, "info", url, AWS_ENDPOINT_URL=dead))
    assert line == f"oxbak: error: cannot open archive '{url}': cannot reach {dead}"


# --------------------------------------------------------------------------- ranged reads


def test_reads_fetch_only_what_they_need(s3env: S3Server, large_tree: Path, tmp_path: Path) -> None:
    from oxbak import _s3

    key = new_key()
    url = s3env.url(key)
    oxbak.pack(large_tree, url)
    data = get(s3env, key)
    size = len(data)
    table = SeekTable.read(_Bytes(data))
    assert table is not None and len(table) > 10

    def fetched(action: Callable[[], object]) -> tuple[int, int]:
        _s3.stats.reset()
        action()
        return _s3.stats.gets, _s3.stats.bytes_read

    def frames_bytes(first: int, last: int) -> int:
        return sum(table.c_sizes[first : last + 1])

    window = _s3.MIN_FETCH
    # The TOC's frames, the footer and the seek table: everything from the TOC on.
    toc = oxbak.read_info(url).toc
    assert toc is not None
    records = {e.path: e for e in oxbak.list_entries(url)}
    tail = size - next(
        table.c_starts[i] for i in range(len(table)) if table.d_starts[i] >= _toc_offset(data)
    )

    figures: dict[str, tuple[int, int]] = {}
    figures["info"] = fetched(lambda: oxbak.read_info(url))
    # The first frame (the manifest) and the footer, one window each.
    assert figures["info"] == (2, 2 * window)

    figures["list"] = fetched(lambda: list(oxbak.list_entries(url)))
    gets, got = figures["list"]
    assert got <= window + max(window, tail) + window and gets <= 4

    def frames_of(path: bytes) -> int:
        offset = _offset_of(url, path)
        end = offset + 3 * 512 + records[path].size
        return frames_bytes(table.frame_at(offset), table.frame_at(end))

    small = b"docs/f0700.txt"  # among 1,500 in several frames
    figures["cat small"] = fetched(lambda: oxbak.cat(url, small.decode(), io.BytesIO()))
    gets, got = figures["cat small"]
    assert got <= figures["list"][1] + max(window, frames_of(small))
    assert got < size / 8

    big = b"blobs/b008.bin"  # 8 MiB in frames of its own, in the middle of the archive
    figures["cat big"] = fetched(lambda: oxbak.cat(url, big.decode(), io.BytesIO()))
    gets, got = figures["cat big"]
    assert got <= figures["list"][1] + frames_of(big) + window
    assert got < size / 2

    figures["unpack --only"] = fetched(
        lambda: oxbak.unpack(url, tmp_path / "only", only=["docs/notes"])
    )
    gets, got = figures["unpack --only"]
    assert got < size / 8

    # A whole read streams: every byte once, in requests of up to MAX_FETCH.
    figures["verify"] = fetched(lambda: oxbak.verify(url))
    gets, got = figures["verify"]
    assert got == size
    assert gets <= len(table)  # fewer requests than frames: read ahead in large windows
    figures["unpack"] = fetched(lambda: oxbak.unpack(url, tmp_path / "all"))
    assert figures["unpack"][1] == size
    assert snapshot(tmp_path / "all") == snapshot(large_tree)

    print(f"\nranged reads of a {size:,}-byte archive ({len(table)} frames):")
    for name, (gets, got) in figures.items():
        print(f"  {name:14} {gets:3} GETs {got:>12,} bytes")


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def pread(self, size: int, offset: int, /) -> bytes:
        return self.data[offset : offset + size]


def _toc_offset(data: bytes) -> int:
    from oxbak.compress import FrameReader
    from oxbak.source import read_footer

    table = SeekTable.read(_Bytes(data))
    assert table is not None
    return read_footer(FrameReader(_Bytes(data), table)).toc_offset


def _offset_of(url: str, path: bytes) -> int:
    from oxbak.source import TocSource, open_source

    with open_source(url, whole=False) as source:
        assert isinstance(source, TocSource)
        record = source.find(path)
        assert record is not None
        return record.offset


def test_an_object_replaced_while_it_is_read_is_refused(
    s3env: S3Server, large_tree: Path, small_tree: Path
) -> None:
    from oxbak import _s3

    key = new_key()
    oxbak.pack(large_tree, s3env.url(key))
    obj = _s3.open_object(s3env.url(key))
    first = obj.pread(100, 0)
    put(s3env, key, b"x" * obj.size)  # another writer replaces it, same size even
    assert obj.pread(100, 0) == first  # cached: no request
    with pytest.raises(InputError, match="replaced while it was read"):
        obj.pread(1000, obj.size // 2)


# --------------------------------------------------------------------------- no clobber


def test_an_existing_key_is_not_overwritten_without_force(
    s3: S3Server, small_tree: Path, large_tree: Path, tmp_path: Path
) -> None:
    key = new_key()
    url = s3.url(key)
    ok(run(s3, "pack", small_tree, "-o", url))
    before = get(s3, key)
    line = one_error(run(s3, "pack", large_tree, "-o", url))
    # The same error as for a file.
    local = tmp_path / "out.oxbak"
    ok(run(s3, "pack", small_tree, "-o", local))
    local_line = one_error(run(s3, "pack", small_tree, "-o", local))
    assert line == local_line.replace(repr(str(local)), repr(url))
    assert line == f"oxbak: error: '{url}' already exists (use --force to replace it)"
    assert get(s3, key) == before
    assert uploads(s3, key) == []

    ok(run(s3, "pack", large_tree, "-o", url, "--force"))
    assert get(s3, key) != before
    dest = tmp_path / "restored"
    ok(run(s3, "unpack", url, dest))
    assert snapshot(dest) == snapshot(large_tree)


def test_an_object_that_appears_during_the_upload_is_not_overwritten(
    s3env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before the pack is not the guarantee: the completion's condition is."""
    monkeypatch.setenv("OXBAK_S3_PART_SIZE", "5")
    key = new_key()
    with (
        pytest.raises(OutputExistsError, match="already exists"),
        open_output(s3env.url(key)) as sink,
    ):
        sink.stream.write(os.urandom(6 * MiB))  # a part goes out
        put(s3env, key, b"the other writer's object")
        sink.stream.write(b"the rest")
    assert get(s3env, key) == b"the other writer's object"
    assert uploads(s3env, key) == []  # aborted, parts deleted

    # With force the object is replaced, whole.
    with open_output(s3env.url(key), force=True) as sink:
        sink.stream.write(b"ours")
    assert get(s3env, key) == b"ours"
    assert sink.size == 4


def test_a_pack_overtaken_by_another_does_not_overwrite_its_object(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Two packs in flight for one key: the first to complete wins, the other is refused.

    The first pack is frozen (SIGSTOP) once its upload has a part on the server, so both
    have passed the check before the scan; the second completes meanwhile. Only the
    conditional completion can then stop the first.
    """
    first_tree = make_tree(tmp_path_factory.mktemp("race1") / "state", seed=1, big=16, small=5)
    second_tree = make_tree(tmp_path_factory.mktemp("race2") / "state", seed=2, small=5)
    key = new_key("race")
    url = s3.url(key)
    client = s3.client()
    first = spawn(s3, "pack", first_tree, "-o", url, "-j", "1", OXBAK_S3_PART_SIZE="5")
    try:
        wait_until(
            lambda: parts_uploaded(client, s3.bucket, key) >= 1 or first.poll() is not None,
            timeout=60.0,
            poll=0.002,
        )
        assert first.poll() is None, "the first pack ended before it could be overtaken"
        first.send_signal(signal.SIGSTOP)
        second = ok(run(s3, "pack", second_tree, "-o", url))
        assert len(uploads(s3, key)) == 1  # the first's, still incomplete
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    line = one_error(subprocess.CompletedProcess(first.args, first.returncode, b"", err))
    assert line == f"oxbak: error: '{url}' already exists (use --force to replace it)"
    assert url in second.stderr.decode()
    dest = tmp_path / "restored"
    ok(run(s3, "unpack", url, dest))
    assert snapshot(dest) == snapshot(second_tree)
    assert uploads(s3, key) == []  # the loser aborted its upload


def test_two_packs_started_together_make_one_object(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    trees = [
        make_tree(tmp_path_factory.mktemp(f"together{n}") / "state", seed=n, big=8, small=5)
        for n in (3, 4)
    ]
    key = new_key("race")
    url = s3.url(key)
    procs = [spawn(s3, "pack", tree, "-o", url, OXBAK_S3_PART_SIZE="5") for tree in trees]
    results = [(p.returncode, *p.communicate(timeout=120)) for p in procs]
    results = [(p.returncode, out, err) for p, (_, out, err) in zip(procs, results, strict=True)]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    loser = next(err for code, _, err in results if code == 1).decode()
    assert loser.splitlines()[-1] == (
        f"oxbak: error: '{url}' already exists (use --force to replace it)"
    ), loser
    assert "Traceback" not in loser
    winner = trees[next(n for n, (code, _, _) in enumerate(results) if code == 0)]
    dest = tmp_path / "restored"
    ok(run(s3, "unpack", url, dest))
    assert snapshot(dest) == snapshot(winner)
    assert uploads(s3, key) == []


# --------------------------------------------------------------------------- interruptions


@pytest.fixture(scope="module")
def kill_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 MiB that does not compress: twelve 5 MiB parts."""
    return make_tree(tmp_path_factory.mktemp("s3kill") / "state", seed=3, big=60, small=5)


KILL_PARTS = 12  # full parts of kill_tree's archive at 5 MiB (a short 13th follows)


def _pack_until(
    s3: S3Server, tree: Path, key: str, parts: int, sig: signal.Signals, may_end: bool = False
) -> tuple[subprocess.Popen[bytes], int, bytes]:
    """Start a pack of *tree* to *key*; send *sig* once *parts* parts are uploaded.

    Returns the process, the parts seen when the signal went, and its stderr. With
    *may_end*, the pack may be over by then (no signal is sent).
    """
    client = s3.client()
    proc = spawn(s3, "pack", tree, "-o", s3.url(key), "-j", "1", OXBAK_S3_PART_SIZE="5")
    seen = -1
    try:

        def reached() -> bool:
            nonlocal seen
            seen = parts_uploaded(client, s3.bucket, key)
            return seen >= parts or proc.poll() is not None

        wait_until(reached, timeout=60.0, poll=0.002)
        if proc.poll() is None:
            proc.send_signal(sig)
        else:
            assert may_end, f"the pack ended before {parts} parts were uploaded"
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, seen, err


def test_kill_9_at_every_part_leaves_no_object(s3: S3Server, kill_tree: Path) -> None:
    """kill -9 after 0, 1, … 11 parts: never an object; the upload is found and removed."""
    seen: set[int] = set()
    for parts in range(KILL_PARTS):
        key = new_key("kill")
        proc, at, _ = _pack_until(s3, kill_tree, key, parts, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        seen.add(at)
        assert not exists(s3, key), f"an object appeared after kill -9 at {at} parts"
        left = uploads(s3, key)
        assert len(left) == 1, left
        if parts == 3:
            # The next pack to the key says what is left and how to remove it.
            tiny = kill_tree / "docs"
            again = ok(run(s3, "pack", tiny, "-o", s3.url(key)))
            assert (
                f"oxbak: warning: {s3.url(key)} has 1 incomplete upload(s) started before "
                f"this pack (one still running, or killed); `oxbak abort-uploads "
                f"{s3.url(key)}` removes them"
            ) in again.stderr.decode()
        aborted = ok(run(s3, "abort-uploads", s3.url(key)))
        assert aborted.stdout.decode().startswith(f"aborted {s3.url(key)} (started ")
        assert uploads(s3, key) == []
    assert len(seen) >= 10, f"the kills landed at too few distinct moments: {sorted(seen)}"


def test_kill_9_as_the_upload_completes(s3: S3Server, kill_tree: Path) -> None:
    """Every part is there: the object is either absent or whole, never partial."""
    key = new_key("kill")
    proc, at, _ = _pack_until(s3, kill_tree, key, KILL_PARTS, signal.SIGKILL, may_end=True)
    assert at >= KILL_PARTS  # 12 full parts, a short 13th, or the upload already complete
    if exists(s3, key):
        ok(run(s3, "verify", s3.url(key)))
        assert uploads(s3, key) == []
    else:
        assert len(uploads(s3, key)) == 1
        ok(run(s3, "abort-uploads", s3.url(key)))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_pack_aborts_its_upload(
    s3: S3Server, kill_tree: Path, sig: signal.Signals
) -> None:
    key = new_key("int")
    proc, _, err = _pack_until(s3, kill_tree, key, 2, sig)
    assert proc.returncode == 128 + sig or proc.returncode == 130, err
    lines = err.decode().splitlines()
    assert lines == ["oxbak: error: interrupted"], err
    assert not exists(s3, key)
    assert uploads(s3, key) == []  # aborted: no parts left behind


def test_an_upload_aborted_under_a_pack_fails_it_cleanly(s3: S3Server, kill_tree: Path) -> None:
    key = new_key("gone")
    client = s3.client()
    proc = spawn(s3, "pack", kill_tree, "-o", s3.url(key), "-j", "1", OXBAK_S3_PART_SIZE="5")
    wait_until(
        lambda: parts_uploaded(client, s3.bucket, key) >= 1 or proc.poll() is not None,
        timeout=60.0,
        poll=0.002,
    )
    assert proc.poll() is None, "the pack ended before its upload could be aborted"
    proc.send_signal(signal.SIGSTOP)  # held mid-upload while its upload is aborted
    try:
        ok(run(s3, "abort-uploads", s3.url(key)))
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)
    line = one_error(result)
    assert line == (
        f"oxbak: error: cannot write '{s3.url(key)}': the upload was aborted meanwhile (by "
        f"another client, `oxbak abort-uploads` or a lifecycle rule)"
    )
    assert not exists(s3, key)
    assert uploads(s3, key) == []


def test_too_many_parts_is_refused_and_aborted(
    s3env: S3Server, large_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oxbak import _s3

    monkeypatch.setenv("OXBAK_S3_PART_SIZE", "5")
    monkeypatch.setattr(_s3, "MAX_PARTS", 2)
    key = new_key()
    # The size is known before the upload: parts are chosen large enough...
    oxbak.pack(large_tree, s3env.url(key))
    assert exists(s3env, key)
    # ...but an archive that outgrows its estimate is stopped at the limit, not cut short.
    monkeypatch.setattr("oxbak.writer._size_bound", lambda scan: 1)
    key = new_key()
    with pytest.raises(OutputError, match="outgrew S3's 2 parts of 5 MiB"):
        oxbak.pack(large_tree, s3env.url(key))
    assert not exists(s3env, key)
    assert uploads(s3env, key) == []


def test_part_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    from oxbak import _s3

    monkeypatch.delenv("OXBAK_S3_PART_SIZE", raising=False)
    assert _s3.part_size_for(None) == 16 * MiB
    assert _s3.part_size_for(156 * 1024 * MiB) == 16 * MiB  # 10,000 parts of 16 MiB
    bigger = _s3.part_size_for(1 << 40)  # a TiB: larger parts, still at most 10,000
    assert bigger % MiB == 0 and bigger * 10_000 >= 1 << 40 and bigger < 128 * MiB
    with pytest.raises(OutputError, match="cannot be uploaded"):
        _s3.part_size_for(10_000 * 5 * 1024 * MiB + 1)
    monkeypatch.setenv("OXBAK_S3_PART_SIZE", "8")
    assert _s3.part_size_for(None) == 8 * MiB
    for bad in ("4", "x", "5121"):
        monkeypatch.setenv("OXBAK_S3_PART_SIZE", bad)
        with pytest.raises(OutputError, match="OXBAK_S3_PART_SIZE"):
            _s3.part_size_for(None)


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("damage", ["truncated", "cut-in-half", "flipped-byte"])
def test_a_damaged_object_is_refused_and_nothing_committed(
    s3: S3Server, large_tree: Path, tmp_path: Path, damage: str
) -> None:
    key = new_key()
    url = s3.url(key)
    ok(run(s3, "pack", large_tree, "-o", url))
    data = bytearray(get(s3, key))
    if damage == "truncated":
        data = data[:-100]
    elif damage == "cut-in-half":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x20  # inside a file's frame
    put(s3, key, bytes(data))

    assert run(s3, "verify", url).returncode == 1
    dest = tmp_path / "dest"
    line = one_error(run(s3, "unpack", url, dest))
    assert url in line
    assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == []  # no staging directory left either

    # Over an existing tree, --replace leaves it exactly as it was.
    existing = tmp_path / "existing"
    ok(run(s3, "unpack", s3.url(_good_copy(s3, large_tree)), existing))
    before = snapshot(existing)
    one_error(run(s3, "unpack", url, existing, "--replace"))
    assert snapshot(existing) == before


_good: dict[Path, str] = {}


def _good_copy(s3: S3Server, tree: Path) -> str:
    if tree not in _good:
        key = new_key("good")
        ok(run(s3, "pack", tree, "-o", s3.url(key)))
        _good[tree] = key
    return _good[tree]


def test_cat_of_a_damaged_file_stops_short(s3env: S3Server, large_tree: Path) -> None:
    key = new_key()
    url = s3env.url(key)
    oxbak.pack(large_tree, url)
    offset = _offset_of(url, b"blobs/b008.bin")
    data = bytearray(get(s3env, key))
    table = SeekTable.read(_Bytes(bytes(data)))
    assert table is not None
    frame = table.frame_at(offset + 4 * MiB)
    data[table.c_starts[frame] + table.c_sizes[frame] // 2] ^= 1
    put(s3env, key, bytes(data))
    out = io.BytesIO()
    with pytest.raises(oxbak.OxbakError):
        oxbak.cat(url, "blobs/b008.bin", out)
    assert len(out.getvalue()) < 8 * MiB


# --------------------------------------------------------------------------- one line each


@pytest.fixture(scope="module")
def stored(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    tree = make_tree(tmp_path_factory.mktemp("s3stored") / "state", seed=5)
    url = s3.url(new_key("stored"))
    ok(run(s3, "pack", tree, "-o", url))
    return url


def test_wrong_credentials_are_one_line(s3: S3Server, stored: str, small_tree: Path) -> None:
    wrong_secret = {"AWS_SECRET_ACCESS_KEY": s3.secret_key + "x"}
    wrong_key = {"AWS_ACCESS_KEY_ID": "nobody"}
    signature = "access denied: the signature does not match (check the secret key)"
    unknown = "access denied: the access key is not known (check the credentials)"
    for command in (
        ["info", stored],
        ["list", stored],
        ["verify", stored],
        ["cat", stored, "hard"],
        ["diff", stored, small_tree],
    ):
        code = 2 if command[0] == "diff" else 1
        line = one_error(run(s3, *command, **wrong_secret), code)
        assert line == f"oxbak: error: cannot open archive '{stored}': {signature}"
        line = one_error(run(s3, *command, **wrong_key), code)
        assert line == f"oxbak: error: cannot open archive '{stored}': {unknown}"
    new = s3.url(new_key())
    line = one_error(run(s3, "pack", small_tree, "-o", new, **wrong_secret))
    assert line == f"oxbak: error: cannot write '{new}': {signature}"
    line = one_error(run(s3, "abort-uploads", new, **wrong_key))
    assert line == f"oxbak: error: cannot list uploads under '{new}': {unknown}"


def test_missing_bucket_key_and_service_are_one_line(
    s3: S3Server, small_tree: Path, tmp_path: Path
) -> None:
    nobucket = "s3://no-such-bucket-here/a.oxbak"
    line = one_error(run(s3, "info", nobucket))
    assert line == f"oxbak: error: cannot open archive '{nobucket}': no such bucket"
    line = one_error(run(s3, "pack", small_tree, "-o", nobucket))
    assert line == f"oxbak: error: cannot write '{nobucket}': no such bucket"
    # (The server would make the bucket on completion; the check before the pack stops it.)
    names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in names

    nokey = s3.url("no/such/key.oxbak")
    line = one_error(run(s3, "unpack", nokey, tmp_path / "dest"))
    assert line == f"oxbak: error: cannot open archive '{nokey}': no such key"
    assert not (tmp_path / "dest").exists()

    dead = "http://127.0.0.1:9"
    line = one_error(run(s3, "pack", small_tree, "-o", nokey, AWS_ENDPOINT_URL=dead))
    assert line == f"oxbak: error: cannot write '{nokey}': cannot reach {dead}"

    line = one_error(run(s3, "info", nokey, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY=""))
    assert line.startswith(f"oxbak: error: cannot open archive '{nokey}': no AWS credentials")

    for bad, why in (
        ("s3://bucket-only", "it names a bucket, not an object (s3://BUCKET/KEY)"),
        ("s3:///key", "it names no bucket (s3://BUCKET/KEY)"),
        ("s3://b/dir/", "it ends with '/': it names a prefix, not an object"),
    ):
        line = one_error(run(s3, "info", bad))
        assert line == f"oxbak: error: cannot open archive '{bad}': {why}"


def test_s3_without_boto3_is_one_line(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['boto3'] = None; sys.argv = ['oxbak', *sys.argv[1:]]; "
        "from oxbak.cli import main; main()"
    )
    for args in (["info", "s3://b/k"], ["pack", str(tmp_path), "-o", "s3://b/k"]):
        result = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, stdin=subprocess.DEVNULL
        )
        line = one_error(result)
        assert line == "oxbak: error: s3:// URLs need boto3: pip install 'oxbak[s3]'"


def test_a_local_archive_never_loads_boto3(tmp_path: Path, small_tree: Path) -> None:
    archive = tmp_path / "a.oxbak"
    oxbak.pack(small_tree, archive)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "oxbak", "info", str(archive)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0
    imported = re.findall(r"\|\s+([\w.]+)$", result.stderr.decode(), re.MULTILINE)
    assert "oxbak.locations" in imported
    assert not {"boto3", "botocore", "oxbak._s3"} & set(imported)


# --------------------------------------------------------------------------- abort-uploads


def test_abort_uploads_finds_and_removes_incomplete_uploads(s3: S3Server) -> None:
    client = s3.client()
    prefix = f"left/{uuid.uuid4().hex[:8]}/"
    keys = [prefix + "a.oxbak", prefix + "b/c.oxbak", f"other/{uuid.uuid4().hex[:8]}.oxbak"]
    for key in keys:
        upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key)
        client.upload_part(
            Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1000
        )
    url = s3.url(prefix)

    dry = ok(run(s3, "abort-uploads", url, "--dry-run")).stdout.decode().splitlines()
    assert [line.split(" (")[0] for line in dry] == [
        f"would abort {s3.url(keys[0])}",
        f"would abort {s3.url(keys[1])}",
    ]
    assert "1 part, 1,000 bytes" in dry[0]
    assert len(uploads(s3, keys[0])) == 1

    recent = ok(run(s3, "abort-uploads", url, "--older-than", "1h"))
    assert recent.stdout == b""
    assert recent.stderr.decode() == f"no incomplete uploads under {url} started 1h ago or more\n"

    done = ok(run(s3, "abort-uploads", url)).stdout.decode().splitlines()
    assert [line.split(" (")[0] for line in done] == [
        f"aborted {s3.url(keys[0])}",
        f"aborted {s3.url(keys[1])}",
    ]
    assert uploads(s3, keys[0]) == uploads(s3, keys[1]) == []
    assert len(uploads(s3, keys[2])) == 1  # outside the prefix: left alone
    nothing = ok(run(s3, "abort-uploads", url))
    assert nothing.stderr.decode() == f"no incomplete uploads under {url}\n"
    ok(run(s3, "abort-uploads", s3.url(keys[2])))

    bad = one_error(run(s3, "abort-uploads", "/tmp/x"), 2)
    assert "s3://" in bad


def test_pack_memory_does_not_grow_with_the_archive(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Parts leave as they fill: an upload holds three parts more than a pack to a file.

    The archive is 96 MiB: held whole, it would show as four times the allowance.
    """
    tree = make_tree(tmp_path_factory.mktemp("s3mem") / "state", seed=9, big=96, small=2)
    code = (
        "import resource, sys, boto3, oxbak; oxbak.pack(sys.argv[1], sys.argv[2]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )

    def peak(output: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", code, str(tree), output],
            capture_output=True,
            env=s3.env(OXBAK_S3_PART_SIZE="8"),
            stdin=subprocess.DEVNULL,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr.decode()
        return int(result.stdout) * 1024

    key = new_key("mem")
    local, upload = peak(str(tmp_path / "a.oxbak")), peak(s3.url(key))
    assert len(get(s3, key)) > 96 * MiB
    allowance = 3 * 8 * MiB + 16 * MiB  # three parts, the client's connections, and noise
    assert upload < local + allowance, (
        f"peak RSS {upload / MiB:.0f} MiB to S3, {local / MiB:.0f} MiB to a file"
    )
