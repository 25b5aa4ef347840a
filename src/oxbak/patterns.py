"""Exclude patterns, with gitignore's meaning (``pathspec.GitIgnoreSpec``).

One set of rules for ``pack --exclude``, ``unpack --exclude`` and ``diff --exclude``,
taken from a well-kept library rather than written again: a pattern without ``/``
matches a name at any depth; one with a ``/`` (other than at its end) is anchored at the
tree's root; ``*`` stays within one component and ``**`` crosses them; a trailing ``/``
matches directories only; a later ``!pattern`` takes an earlier match back. An excluded
directory is left out with everything in it (as git does, nothing under it can be taken
back).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .errors import OxbakError

if TYPE_CHECKING:
    import pathspec

__all__ = ["Excludes", "read_patterns"]


class Excludes:
    """Compiled exclude patterns; remembers which of them ever decided an entry."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = [p for p in patterns if p.strip() and not p.startswith("#")]
        self._spec: pathspec.GitIgnoreSpec | None = None
        if self.patterns:
            # Imported only when there are patterns: it takes ~20 ms, which every
            # `oxbak cat` and `list` would pay otherwise.
            import pathspec

            # "./a/b", as people type a path from the root, is what gitignore writes "/a/b".
            lines = ["/" + p[2:] if p.startswith("./") else p for p in self.patterns]
            try:
                self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
            except (ValueError, TypeError) as exc:  # pathspec's GitWildMatchPatternError
                raise OxbakError(f"invalid exclude pattern: {exc}") from exc
        self._used = [False] * len(self.patterns)
        #: How many entries the patterns left out (an excluded directory counts once).
        self.count = 0

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, rel: bytes, is_dir: bool) -> bool:
        """Whether the entry at *rel* (relative to the root) is left out."""
        if self._spec is None:
            return False
        path = os.fsdecode(rel) + ("/" if is_dir else "")
        result = self._spec.check_file(path)
        if result.index is not None:
            self._used[result.index] = True
        if result.include:
            self.count += 1
            return True
        return False

    def unused(self) -> list[str]:
        """The patterns that decided nothing (worth a warning: usually a typo)."""
        return [p for p, used in zip(self.patterns, self._used, strict=True) if not used]


def read_patterns(path: str) -> list[str]:
    """The patterns of a file in .gitignore syntax (blank lines and ``#`` comments left out).

    :raises OxbakError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            lines: Iterable[str] = fh.read().splitlines()
    except OSError as exc:
        raise OxbakError(f"cannot read exclude file {path!r}: {exc.strerror}") from exc
    return [line for line in lines if line.strip() and not line.startswith("#")]
