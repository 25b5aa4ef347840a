#!/usr/bin/env python3
"""Generate a deterministic, Oxios-like state tree for benchmarks and demos.

Usage:
  make_state.py DEST [--profile small|large|mixed|huge-count] [--scale F] [--seed N]
                     [--extras] [--jobs N]

Profiles (sizes at --scale 1):
  small       many small JSON documents in the Oxios state categories (seeds, evals,
              memory/*, sessions, agent_groups): 60,000 files, ~100 MB
  large       four large files in blobs/: two JSONL logs (compressible), one binary blob
              (incompressible, like embeddings) and one half-and-half file: 768 MiB
  mixed       small and large at half scale each, plus the --extras entries
  huge-count  1,000,000 tiny JSON files (100-300 bytes) in the same categories, in
              subdirectories of at most 1,000 files each (CATEGORY/0000/000000.json)

--scale multiplies the file count (small, huge-count) or the file sizes (large).

--extras adds to any profile: empty directories (empty/nested), two relative symlinks
and one hardlink. With the categories present they are
  memory/seeds-link -> ../seeds
  seeds/latest.json -> 000001.json        (0000/000001.json for huge-count)
  memory/facts/hardlink.json              hardlink of memory/facts/000000.json
                                          (memory/facts/0000/000000.json for huge-count)
and with only blobs/ (profile large)
  links/blobs -> ../blobs
  blobs/latest.jsonl -> events-1.jsonl
  blobs/index-hardlink.db                 hardlink of blobs/index.db

Determinism: the same arguments give a byte-identical tree, with identical modification
times (every file, directory and symlink gets an mtime derived from the seed, with a
non-zero nanosecond part) and modes 0644/0755, whatever --jobs is. Every piece of work
(a directory of documents, a region of a large file) has its own random
generator seeded from (seed, piece), so pieces can be generated in parallel.

DEST must not exist or must be an empty directory. Standard library only.
"""

from __future__ import annotations

import argparse
import array
import functools
import hashlib
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

CATEGORIES = (
    "seeds",
    "evals",
    "memory/conversations",
    "memory/sessions",
    "memory/facts",
    "memory/episodes",
    "memory/knowledge",
    "sessions",
    "agent_groups",
)
WEIGHTS = (3, 2, 10, 6, 30, 8, 6, 4, 1)
# fmt: off
WORDS = (
    "agent", "memory", "fact", "episode", "tool", "call", "result", "plan", "step", "goal",
    "user", "reply", "context", "token", "model", "kernel", "seed", "eval", "score", "pass",
    "fail", "retry", "cache", "vector", "embedding", "summary", "note", "task", "queue",
    "state", "backup", "restore", "manifest",
)
# fmt: on

SMALL_FILES = 60_000  # files of profile small at scale 1
SMALL_MAX_TEXT = 64_000  # cap of a document's text, in characters
HUGE_FILES = 1_000_000  # files of profile huge-count at scale 1
HUGE_DIR_FILES = 1_000  # files per subdirectory in huge-count
TINY_MIN, TINY_MAX = 100, 300  # size range of a huge-count file, in bytes

MIB = 1 << 20
LARGE_FILES = (  # name, size in MiB at scale 1, content kind
    ("events-0.jsonl", 256, "text"),
    ("events-1.jsonl", 256, "text"),
    ("vectors.bin", 192, "random"),
    ("index.db", 64, "half"),  # each MiB is random or JSONL text, half and half
)
LARGE_REGION = 8 * MIB  # unit of parallel work in a large file

EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: timestamps are safely in the past
YEAR_SECONDS = 360 * 86_400
NS = 1_000_000_000
PHRASES = 65_536  # size of the phrase table (indexed by 16-bit numbers)
LINE_BREAK_EVERY = 16  # one phrase in 16 ends a JSONL line (~300 chars of text)


Piece = tuple[Any, ...]  # (worker name, arguments...): one unit of parallel work


# --------------------------------------------------------------------------- helpers


def rng_for(seed: int, key: str) -> random.Random:
    """An independent generator for one piece of work (string seeds are stable)."""
    return random.Random(f"oxbak-state:{seed}:{key}")


def stable_mtime_ns(seed: int, key: str) -> int:
    """A deterministic timestamp in 2024, in ns, with a non-zero sub-second part."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little")
    return (EPOCH + h % YEAR_SECONDS) * NS + 1 + (h >> 32) % (NS - 1)


def random_mtime_ns(bits: int) -> int:
    """Like stable_mtime_ns, from 64 random bits."""
    return (EPOCH + bits % YEAR_SECONDS) * NS + 1 + (bits >> 32) % (NS - 1)


def u16s(data: bytes) -> array.array[int]:
    """The bytes as little-endian unsigned 16-bit numbers, on any platform."""
    values = array.array("H", data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


@functools.cache
def tables(seed: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Seeded lookup tables: (phrases, JSON tag blocks, JSONL line tokens).

    phrases: 65,536 random three-word phrases, each followed by a space. Text is a
    sequence of phrases picked by random 16-bit numbers: about as random per word as
    picking each word independently, but an order of magnitude faster in Python.
    line tokens: the phrases, with one in LINE_BREAK_EVERY replaced by the end of a
    JSONL line and the start of the next (its "id" is a %s placeholder).
    """
    rng = rng_for(seed, "tables")
    picks = rng.choices(WORDS, k=3 * PHRASES)
    phrases = tuple(" ".join(picks[i : i + 3]) + " " for i in range(0, 3 * PHRASES, 3))
    tags = tuple(
        "[\n    " + ",\n    ".join(f'"{w}"' for w in rng.sample(WORDS, 3)) + "\n  ]"
        for _ in range(4096)
    )
    tokens = list(phrases)
    for i in range(0, PHRASES, LINE_BREAK_EVERY):
        tokens[i] = '"}\n' + jsonl_line_start(rng)
    return phrases, tags, tuple(tokens)


def jsonl_line_start(rng: random.Random) -> str:
    """The start of one JSONL event line, up to the opening quote of its text."""
    tags = ", ".join(f'"{w}"' for w in rng.sample(WORDS, 3))
    return (
        f'{{"id": "%s", "created_at": "{created_at(rng.getrandbits(32))}", '
        f'"event": "{rng.choice(WORDS)}", "tags": [{tags}], '
        f'"score": {rng.random():.6f}, "text": "'
    )


def created_at(bits: int) -> str:
    """An RFC 3339 time in 2024 (minute resolution) from 32 random bits."""
    return (
        f"2024-{bits % 12 + 1:02d}-{(bits >> 4) % 28 + 1:02d}T"
        f"{(bits >> 9) % 24:02d}:{(bits >> 14) % 60:02d}:00Z"
    )


class TextSource:
    """A stream of random words, handed out in pieces of a requested length."""

    def __init__(self, rng: random.Random, phrases: tuple[str, ...], block: int = 1 << 14):
        self.rng, self.phrases, self.block = rng, phrases, block
        self.buf, self.pos = "", 0

    def take(self, n: int, whole_words: bool = True) -> str:
        """The next n characters; with whole_words, cut back to the last full word."""
        while self.pos + n + 1 > len(self.buf):
            more = "".join(map(self.phrases.__getitem__, u16s(self.rng.randbytes(2 * self.block))))
            self.buf, self.pos = self.buf[self.pos :] + more, 0
        piece = self.buf[self.pos : self.pos + n]
        if whole_words:
            cut = piece.rfind(" ")
            if cut > 0:
                piece = piece[:cut]
        self.pos += len(piece) + 1
        return piece


def write_file(dir_fd: int, name: str, data: bytes, mtime_ns: int) -> None:
    """Create (or truncate) name in dir_fd with data and the given mtime/atime."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- work pieces


def small_docs(dest: str, seed: int, cat: str, start: int, stop: int) -> tuple[int, int]:
    """Write documents start..stop-1 of category cat (pretty-printed JSON, ~1.7 KB)."""
    phrases, tags, _ = tables(seed)
    rng = rng_for(seed, f"small/{cat}/{start}")
    text = TextSource(rng, phrases)
    dir_fd = os.open(os.path.join(dest, cat), os.O_RDONLY | os.O_DIRECTORY)
    written = 0
    try:
        for i in range(start, stop):
            bits = rng.getrandbits(160)
            size = min(int(rng.lognormvariate(7.0, 0.8)), SMALL_MAX_TEXT)  # median ~1.1 KB
            data = (
                f'{{\n  "id": "{i:08x}-{bits & 0xFFFF_FFFF_FFFF_FFFF:016x}",\n'
                f'  "created_at": "{created_at((bits >> 64) & 0xFFFF_FFFF)}",\n'
                f'  "tags": {tags[(bits >> 96) % 4096]},\n'
                f'  "score": {((bits >> 108) % 1_000_000) / 1e6:.6f},\n'
                f'  "text": "{text.take(size)}"\n}}'
            ).encode()
            write_file(dir_fd, f"{i:06d}.json", data, random_mtime_ns(rng.getrandbits(64)))
            written += len(data)
    finally:
        os.close(dir_fd)
    return stop - start, written


def huge_subdir(dest: str, seed: int, cat: str, sub: int, start: int, stop: int) -> tuple[int, int]:
    """Write tiny documents start..stop-1 of category cat into its subdirectory sub."""
    phrases, _, _ = tables(seed)
    rng = rng_for(seed, f"huge/{cat}/{sub}")
    text = TextSource(rng, phrases)
    dir_fd = os.open(os.path.join(dest, cat, f"{sub:04d}"), os.O_RDONLY | os.O_DIRECTORY)
    written = 0
    try:
        for i in range(start, stop):
            bits = rng.getrandbits(256)
            head = (
                f'{{"id":"{i:08x}-{bits & 0xFFFF_FFFF_FFFF_FFFF:016x}",'
                f'"ts":"{created_at((bits >> 64) & 0xFFFF_FFFF)}",'
                f'"score":{((bits >> 96) & 0xFFFF_FFFF) % 1_000_000 / 1e6:.6f},"text":"'
            )
            size = TINY_MIN + ((bits >> 128) & 0xFFFF_FFFF) % (TINY_MAX - TINY_MIN + 1)
            data = (head + text.take(size - len(head) - 3, whole_words=False) + '"}\n').encode()
            write_file(dir_fd, f"{i:06d}.json", data, random_mtime_ns(bits >> 192))
            written += len(data)
    finally:
        os.close(dir_fd)
    return stop - start, written


def jsonl_chunk(rng: random.Random, tokens: tuple[str, ...], first: str, n: int) -> bytes:
    """Exactly n bytes of JSONL event lines; every line is a complete JSON object.

    The last line is padded with spaces after its closing brace (valid JSON).
    """
    parts = [first]
    length = len(first)
    while length < n + 2_000:
        more = "".join(map(tokens.__getitem__, u16s(rng.randbytes(2 * (n // 16 + 64)))))
        parts.append(more)
        length += len(more)
    text = "".join(parts)
    count = text.count("%s")
    ids = rng.randbytes(8 * count).hex()
    text = text % tuple(ids[j : j + 16] for j in range(0, 16 * count, 16))
    cut = text.rfind("\n", 0, n)
    if cut < 0:  # n is shorter than one line (tiny --scale): blank padding
        return b" " * (n - 1) + b"\n" if n else b""
    return (text[:cut] + " " * (n - cut - 1) + "\n").encode()


def large_region(
    dest: str, seed: int, name: str, kind: str, offset: int, length: int
) -> tuple[int, int]:
    """Write bytes offset..offset+length-1 of blobs/name, one MiB chunk at a time."""
    _, _, tokens = tables(seed)
    rng = rng_for(seed, f"large/{name}/{offset}")
    chunks = []
    for pos in range(0, length, MIB):
        n = min(MIB, length - pos)
        if kind == "random" or (kind == "half" and rng.random() < 0.5):
            chunks.append(rng.randbytes(n))
        else:
            first = jsonl_line_start(rng)
            chunks.append(jsonl_chunk(rng, tokens, first, n))
    data = b"".join(chunks)
    fd = os.open(os.path.join(dest, "blobs", name), os.O_WRONLY)
    try:
        view, at = memoryview(data), offset
        while view:
            done = os.pwrite(fd, view, at)
            view, at = view[done:], at + done
    finally:
        os.close(fd)
    return 0, len(data)


def run_piece(piece: Piece) -> tuple[int, int]:
    """Run one work piece (function name, arguments); returns (files, bytes)."""
    name, *args = piece
    workers: dict[str, Callable[..., tuple[int, int]]] = {
        "small": small_docs,
        "huge": huge_subdir,
        "large": large_region,
    }
    func = workers[name]
    return func(*args)


# --------------------------------------------------------------------------- planning


def category_counts(total: int) -> list[tuple[str, int]]:
    """Files per category for a total, in the fixed proportions."""
    return [(cat, total * w // sum(WEIGHTS)) for cat, w in zip(CATEGORIES, WEIGHTS, strict=True)]


def plan_small(dest: str, seed: int, scale: float, dirs: list[str], pieces: list[Piece]) -> None:
    """Add the directories and pieces of profile small at the given scale.

    One piece per directory, so that each directory's files are created one after the
    other in name order (a directory's on-disk size depends on its insertion order).
    """
    for cat, count in category_counts(int(SMALL_FILES * scale)):
        dirs.append(cat)
        pieces.append(("small", dest, seed, cat, 0, count))


def plan_huge(dest: str, seed: int, scale: float, dirs: list[str], pieces: list[Piece]) -> None:
    """Add the directories and pieces of profile huge-count at the given scale."""
    for cat, count in category_counts(int(HUGE_FILES * scale)):
        dirs.append(cat)
        for sub, start in enumerate(range(0, count, HUGE_DIR_FILES)):
            dirs.append(f"{cat}/{sub:04d}")
            pieces.append(("huge", dest, seed, cat, sub, start, min(count, start + HUGE_DIR_FILES)))


def plan_large(
    dest: str, seed: int, scale: float, dirs: list[str], pieces: list[Piece]
) -> list[tuple[str, int]]:
    """Add the directory and pieces of profile large; returns (file, size) to create."""
    dirs.append("blobs")
    files = []
    for name, mib, kind in LARGE_FILES:
        size = int(mib * MIB * scale)
        files.append((f"blobs/{name}", size))
        for offset in range(0, size, LARGE_REGION):
            pieces.append(
                ("large", dest, seed, name, kind, offset, min(LARGE_REGION, size - offset))
            )
    return files


def add_extras(dest: str, profile: str) -> tuple[list[str], list[str]]:
    """Create the extra entries; returns (symlinks made, notes about skipped ones)."""
    join = os.path.join
    if os.path.isdir(join(dest, "seeds")):
        sub = "0000/" if profile == "huge-count" else ""
        links = [("../seeds", "memory/seeds-link"), (f"{sub}000001.json", "seeds/latest.json")]
        hardlink = (f"memory/facts/{sub}000000.json", "memory/facts/hardlink.json")
    else:
        links = [("../blobs", "links/blobs"), ("events-1.jsonl", "blobs/latest.jsonl")]
        hardlink = ("blobs/index.db", "blobs/index-hardlink.db")
    for target, path in links:
        os.symlink(target, join(dest, path))
    notes = []
    if os.path.isfile(join(dest, hardlink[0])):
        os.link(join(dest, hardlink[0]), join(dest, hardlink[1]))
    else:
        notes.append(f"no hardlink: {hardlink[0]} does not exist at this scale")
    return [path for _, path in links], notes


def generate(
    dest: str, profile: str, scale: float, seed: int, extras: bool, jobs: int
) -> tuple[int, int]:
    """Build the whole tree; returns (regular files, bytes)."""
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise SystemExit(f"make_state.py: {dest} must not exist or must be an empty directory")
    os.umask(0o022)
    extras = extras or profile == "mixed"
    part = scale / 2 if profile == "mixed" else scale
    dirs: list[str] = []
    pieces: list[Piece] = []
    large_files: list[tuple[str, int]] = []
    if profile in ("small", "mixed"):
        plan_small(dest, seed, part, dirs, pieces)
    if profile == "huge-count":
        plan_huge(dest, seed, part, dirs, pieces)
    if profile in ("large", "mixed"):
        large_files = plan_large(dest, seed, part, dirs, pieces)
    if extras:
        dirs += ["empty", "empty/nested"] + ([] if "memory/facts" in dirs else ["links"])
    os.makedirs(dest, exist_ok=True)
    all_dirs = sorted({d for path in dirs for d in ancestors(path)})
    for d in all_dirs:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    for path, size in large_files:
        fd = os.open(os.path.join(dest, path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        os.close(fd)

    tables(seed)  # build once here, so forked workers inherit it
    files = total = 0
    if jobs > 1 and len(pieces) > 1:
        with multiprocessing.Pool(min(jobs, len(pieces))) as pool:
            for n, b in pool.imap_unordered(run_piece, pieces):
                files, total = files + n, total + b
    else:
        for piece in pieces:
            n, b = run_piece(piece)
            files, total = files + n, total + b
    files += len(large_files)

    for path, _ in large_files:
        mtime = stable_mtime_ns(seed, f"file:{path}")
        os.utime(os.path.join(dest, path), ns=(mtime, mtime))
    if extras:
        symlinks, notes = add_extras(dest, profile)
        for note in notes:
            print(f"make_state.py: {note}", file=sys.stderr)
        for path in symlinks:
            mtime = stable_mtime_ns(seed, f"symlink:{path}")
            os.utime(os.path.join(dest, path), ns=(mtime, mtime), follow_symlinks=False)
    for d in all_dirs + [""]:  # directory mtimes last: creating entries changes them
        mtime = stable_mtime_ns(seed, f"dir:{d}")
        os.utime(os.path.join(dest, d) if d else dest, ns=(mtime, mtime))
    return files, total


def ancestors(path: str) -> list[str]:
    """path and each of its parent directories: 'a/b/c' -> ['a', 'a/b', 'a/b/c']."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", help="directory to create (must not exist or be empty)")
    p.add_argument("--profile", choices=["small", "large", "mixed", "huge-count"], default="small")
    p.add_argument("--scale", type=float, default=1.0, help="multiply file counts or sizes")
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument(
        "--extras",
        action="store_true",
        help="add empty dirs, two relative symlinks and a hardlink (always on for mixed)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="worker processes (the tree does not depend on it)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    a = p.parse_args()
    if a.scale <= 0:
        p.error("--scale must be positive")
    start = time.perf_counter()
    files, total = generate(a.dest, a.profile, a.scale, a.seed, a.extras, max(1, a.jobs))
    if not a.quiet:
        print(
            f"make_state.py: {a.profile} x{a.scale:g}: {files} files, {total / 1e6:.1f} MB "
            f"in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
