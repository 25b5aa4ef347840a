"""Real mount points for the tests that restore into one (root only, else skipped)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    result = subprocess.run(["mount", *args], capture_output=True, timeout=60)
    if result.returncode:
        pytest.skip(f"cannot mount here: {result.stderr.decode(errors='replace').strip()}")


@contextlib.contextmanager
def mounted(path: Path, *args: str) -> Iterator[Path]:
    """*path* (created if need be) with ``mount ARGS… path`` on it, unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    _mount(*args, str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


def tmpfs(path: Path, options: str = "size=256m") -> contextlib.AbstractContextManager[Path]:
    """A fresh tmpfs at *path*, mounted with *options*."""
    return mounted(path, "-t", "tmpfs", "-o", options, "oxbak-test")


def bind(path: Path) -> contextlib.AbstractContextManager[Path]:
    """*path* bind-mounted onto itself: the same filesystem, yet a mount point."""
    path.mkdir(parents=True, exist_ok=True)
    return mounted(path, "--bind", str(path))


@contextlib.contextmanager
def ext4(path: Path, image: Path, size_mb: int = 32) -> Iterator[Path]:
    """A fresh ext4 filesystem (with its ``lost+found``) in *image*, loop-mounted at *path*."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("needs mkfs.ext4 (e2fsprogs)")
    with open(image, "wb") as fh:
        fh.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot make an ext4 filesystem: {made.stderr.decode().strip()}")
    with mounted(path, "-o", "loop", str(image)) as where:
        yield where


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, timeout=60)
