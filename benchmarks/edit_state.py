#!/usr/bin/env python3
"""Change about 1 % of a state tree's files, the same way every time (incremental benchmarks).

Usage:
  edit_state.py TREE [--step N] [--seed N] [--share F]

An edit picks max(1, round(share x regular files)) files of TREE (share 0.01 by default)
with a generator seeded from (seed, step) over the sorted list of its regular files, and
splits them, in this order of priority when there are fewer files than kinds:

  patched     a region in the middle (1 % of the file, at least 64 bytes) overwritten in
              place: same size, same inode, new content (a database page, an edited field)
  grown       text appended (1 % of the file, at least 64 bytes): a log that grew
  added       a new file next to a picked one, of that file's size (capped at 1 MiB)
  deleted     unlinked
  renamed     moved within its directory to STEM.edit<step>SUFFIX

in the proportions 1/4, 1/4, 1/4, 1/8, 1/8. Files with other links (hardlinks) are left
alone, so the tree's hardlink groups do not change. The new bytes are words of the state
generator's vocabulary (compressible like its documents); with the same tree, step and
seed, the same files change in the same way. Only their times differ: they are those of
the edit, as a real change would leave them.

Applying steps 1, 2, 3, ... one after another gives the successive states of a chain of
incremental archives. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

SEED = 20261124  # make_state.py's default seed
EDIT_SHARE = 0.01  # share of the regular files an edit touches
MIN_CHANGE = 64  # bytes at least that a patch overwrites or a growth appends
MAX_ADDED = 1 << 20  # an added file copies a picked file's size up to this
KINDS = ("patched", "grown", "added", "deleted", "renamed")  # in order of priority
WEIGHTS = (2, 2, 2, 1, 1)  # eighths of the edited files
# fmt: off
WORDS = (
    "agent", "memory", "fact", "episode", "tool", "call", "result", "plan", "step", "goal",
    "user", "reply", "context", "token", "model", "kernel", "edit", "update", "note", "task",
)
# fmt: on


@dataclass
class Edit:
    """What one edit did to a tree."""

    step: int
    files_before: int  # regular files (not hardlinked) the edit picked from
    patched: int = 0
    grown: int = 0
    added: int = 0
    deleted: int = 0
    renamed: int = 0
    bytes_written: int = 0  # new bytes: patches, appended text and added files

    @property
    def touched(self) -> int:
        """Files changed, added, deleted or renamed."""
        return self.patched + self.grown + self.added + self.deleted + self.renamed

    def summary(self) -> str:
        """One line: '600 of 59996 files (1.0 %): 150 patched, ...; 0.64 MB written'."""
        share = self.touched / self.files_before if self.files_before else 0.0
        kinds = ", ".join(f"{getattr(self, k)} {k}" for k in KINDS if getattr(self, k))
        return (
            f"{self.touched} of {self.files_before} files ({share * 100:.1f} %): {kinds}; "
            f"{self.bytes_written / 1_000_000:.2f} MB written"
        )


def counts(total: int) -> dict[str, int]:
    """How many files of each kind an edit of total files changes.

    Each kind gets its share rounded down; what is left goes to the kinds in their order
    of priority, so one file is patched and two are patched and grown.
    """
    parts = {k: total * w // sum(WEIGHTS) for k, w in zip(KINDS, WEIGHTS, strict=True)}
    left = total - sum(parts.values())
    for k in KINDS[:left]:
        parts[k] += 1
    return parts


def words(rng: random.Random, n: int) -> bytes:
    """Exactly n bytes of space-separated vocabulary words."""
    out = bytearray()
    while len(out) < n:
        out += rng.choice(WORDS).encode() + b" "
    return bytes(out[:n])


def regular_files(root: Path) -> list[str]:
    """The tree's regular files with no other link, as sorted paths relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                found.append(os.path.relpath(path, root))
    return sorted(found)


def change(rng: random.Random, path: Path, kind: str, step: int, number: int) -> int:
    """Apply one kind of change to path; returns the bytes written."""
    size = path.stat().st_size
    amount = max(MIN_CHANGE, size // 100)
    if kind == "patched":
        amount = min(amount, size)
        with path.open("r+b") as f:
            f.seek((size - amount) // 2)
            f.write(words(rng, amount))
        return amount
    if kind == "grown":
        with path.open("ab") as f:
            f.write(b"\n" + words(rng, amount - 1))
        return amount
    if kind == "added":
        new = path.with_name(f"edit{step}-{number:06d}{path.suffix}")
        data = words(rng, min(size, MAX_ADDED))
        new.write_bytes(data)
        return len(data)
    if kind == "deleted":
        path.unlink()
        return 0
    if kind == "renamed":
        path.rename(path.with_name(f"{path.stem}.edit{step}{path.suffix}"))
        return 0
    raise ValueError(kind)


def edit_tree(root: Path, step: int, seed: int = SEED, share: float = EDIT_SHARE) -> Edit:
    """Change about share of root's regular files (see the module's description)."""
    files = regular_files(root)
    edit = Edit(step, len(files))
    if not files:
        return edit
    rng = random.Random(f"oxbak-edit:{seed}:{step}")
    plan = counts(max(1, round(len(files) * share)))
    # Changed, deleted and renamed files are distinct; an added file sits next to any file.
    distinct = plan["patched"] + plan["grown"] + plan["deleted"] + plan["renamed"]
    changed = rng.sample(files, min(len(files), distinct))
    picks = iter(changed)
    number = 0
    for kind in KINDS:
        for _ in range(plan[kind]):
            rel = rng.choice(files) if kind == "added" else next(picks, None)
            if rel is None:
                break  # fewer files than the plan (a tiny tree)
            edit.bytes_written += change(rng, root / rel, kind, step, number)
            setattr(edit, kind, getattr(edit, kind) + 1)
            number += 1
    return edit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree", type=Path, help="the tree to change in place")
    p.add_argument("--step", type=int, default=1, help="which edit of a chain (default 1)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--share", type=float, default=EDIT_SHARE, help="share of the files")
    a = p.parse_args()
    if not a.tree.is_dir():
        p.error(f"{a.tree} is not a directory")
    if not 0 < a.share <= 1:
        p.error("--share must be in (0, 1]")
    print(f"edit_state.py: step {a.step}: {edit_tree(a.tree, a.step, a.seed, a.share).summary()}")


if __name__ == "__main__":
    main()
