"""Build trees from a description and take exact snapshots of trees, for comparisons."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field


@dataclass
class Node:
    """A description of one entry to create: ``kind`` is file, dir, symlink or hardlink."""

    kind: str
    data: bytes = b""
    mode: int = 0o644
    mtime_ns: int = 1_700_000_000_123_456_789
    target: bytes = b""
    children: dict[bytes, Node] = field(default_factory=dict)


def build(
    root: bytes | str,
    tree: dict[bytes, Node],
    *,
    mode: int = 0o755,
    mtime_ns: int = 1_600_000_000_000_000_001,
) -> None:
    """Create *tree* under *root* (which must not exist); modes and mtimes are set last."""
    root_b = os.fsencode(root)
    os.mkdir(root_b)
    dirs: list[tuple[bytes, Node]] = [(root_b, Node("dir", mode=mode, mtime_ns=mtime_ns))]
    links: list[tuple[bytes, bytes]] = []

    def make(base: bytes, entries: dict[bytes, Node]) -> None:
        for name, node in entries.items():
            path = base + b"/" + name
            if node.kind == "dir":
                os.mkdir(path)
                make(path, node.children)
                dirs.append((path, node))
            elif node.kind == "file":
                with open(path, "wb") as fh:
                    fh.write(node.data)
                os.chmod(path, node.mode)
                os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
            elif node.kind == "symlink":
                os.symlink(node.target, path)
                os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
            else:
                links.append((path, root_b + b"/" + node.target))

    make(root_b, tree)
    for path, target in links:
        os.link(target, path)
    for path, node in reversed(dirs):
        os.chmod(path, node.mode)
        os.utime(path, ns=(node.mtime_ns, node.mtime_ns))


def set_mtimes(root: str | os.PathLike[str], base_ns: int, step: int = 1_000_000_007) -> None:
    """Give every entry under *root* a distinct nanosecond mtime, *step* apart.

    Files and symlinks first (in path order), then directories deepest first, so that
    setting a child's time never moves its parent's afterwards.
    """
    root_b = os.fsencode(root)
    dirs: list[bytes] = [root_b]
    others: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            (others if os.path.islink(p) else dirs).append(p)
        others += [os.path.join(dirpath, name) for name in filenames]
    for i, p in enumerate(sorted(others)):
        t = base_ns + i * step
        os.utime(p, ns=(t, t), follow_symlinks=False)
    for i, p in enumerate(sorted(dirs, key=lambda d: -d.count(b"/"))):
        t = base_ns + (len(others) + i) * step + 1
        os.utime(p, ns=(t, t), follow_symlinks=False)


def snapshot(root: bytes | str) -> dict[bytes, tuple[object, ...]]:
    """Every entry under *root* (itself as ``b""``): type, permissions, mtime, content.

    Hardlinks show as the sorted group of paths sharing the inode.
    """
    root_b = os.fsencode(root)
    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, list[bytes]] = {}

    def visit(rel: bytes) -> None:
        path = root_b + b"/" + rel if rel else root_b
        st = os.lstat(path)
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", perm, st.st_mtime_ns)
            for name in sorted(os.listdir(path)):
                visit(rel + b"/" + name if rel else name)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[rel] = ("file", perm, st.st_mtime_ns, st.st_size, digest)
            inodes.setdefault(st.st_ino, []).append(rel)
        else:
            out[rel] = ("special", stat.S_IFMT(st.st_mode))

    visit(b"")
    for group in inodes.values():
        if len(group) > 1:
            for rel in group:
                out[rel] = out[rel] + (tuple(sorted(group)),)
    return out
