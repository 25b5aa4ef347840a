"""Pure rules for names: member names, entry order, link targets, display.

Nothing here touches the filesystem, tar or zstd. Paths are ``bytes`` throughout, because
Linux names are bytes and oxbak must not lose or rename a file whose name is not UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable

from . import format as fmt
from .errors import LimitExceededError, UnsafeArchiveError

__all__ = [
    "check_path",
    "display",
    "link_stays_inside",
    "member_name",
    "parse_member_name",
    "shown",
    "sort_key",
]

_TREE = fmt.TREE_PREFIX.encode()
_PREFIX = _TREE + b"/"
_PREFIX_LEN = len(_PREFIX)
_MAX_LINK_HOPS = 40  # the kernel's own limit (MAXSYMLINKS)


def display(path: bytes) -> str:
    r"""Render *path* for people: UTF-8, with other bytes as ``\xNN`` and ``\`` as ``\\``.

    Characters a terminal would act on rather than show (newlines, escapes, other control
    and format characters) become ``\uNNNN``, so a name can never move the cursor or
    recolour the screen. Distinct paths give distinct strings, so messages
    and sections never merge two names.
    """
    text = path.decode("utf-8", "backslashreplace")
    if b"\\" in path:
        # Escape literal backslashes first so they cannot be confused with \xNN escapes.
        parts = path.split(b"\\")
        text = "\\\\".join(p.decode("utf-8", "backslashreplace") for p in parts)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    return text


def _escaped(char: str) -> str:
    # Always \u or \U, never \x: \xNN stands for a byte that is not UTF-8, and C1
    # controls (U+0080–U+009F) would otherwise look like those bytes.
    code = ord(char)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(path: bytes, limit: int = 160) -> str:
    """:func:`display`, shortened for messages: a hostile 4 KB name stays readable."""
    text = display(path)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 50]}…{text[-40:]}"


def sort_key(path: bytes) -> tuple[bytes, ...]:
    """Key of the archive's entry order: the tuple of path components (root first)."""
    return tuple(path.split(b"/")) if path else ()


def member_name(path: bytes, *, is_dir: bool = False) -> bytes:
    """The tar member name of the tree entry at relative *path* (``b""`` is the root)."""
    if not path:
        return _PREFIX
    return _PREFIX + path + (b"/" if is_dir else b"")


def parse_member_name(name: bytes) -> bytes:
    """Check a tree member's name and return its path relative to the tree root.

    Accepts ``tree``, ``tree/`` and ``tree/<relative path>`` (with an optional trailing
    ``/``), where every component is non-empty, not ``.`` or ``..`` and holds no NUL.

    :raises UnsafeArchiveError: for absolute names, traversal, names outside ``tree/``.
    :raises LimitExceededError: for names longer than the format allows.
    """
    if name.startswith(_PREFIX) and len(name) <= fmt.MAX_PATH_BYTES:
        # The common case, accepted with a few substring searches. Anything this does not
        # accept goes through the full checks below, which name the fault.
        rel = name[_PREFIX_LEN:]
        if rel.endswith(b"/"):
            rel = rel[:-1]
        # (find() < 0 rather than `not in`: bytes.__contains__ first tries the needle as
        # an int and pays for a TypeError each time, which costs twice the search.)
        if 0 < len(rel) <= fmt.MAX_NAME_BYTES and 0 not in rel:
            wrapped = b"/" + rel + b"/"
            if wrapped.find(b"//") < 0 and wrapped.find(b"/./") < 0 and wrapped.find(b"/../") < 0:
                return rel
    if not name:
        raise UnsafeArchiveError("refusing member with an empty name")
    if b"\0" in name:
        raise UnsafeArchiveError(f"refusing member {shown(name)!r}: name contains a NUL byte")
    if name.startswith(b"/"):
        raise UnsafeArchiveError(f"refusing member {shown(name)!r}: absolute path")
    if len(name) > fmt.MAX_PATH_BYTES:
        raise LimitExceededError(
            f"refusing member {shown(name)!r}: name is {len(name)} bytes, "
            f"limit {fmt.MAX_PATH_BYTES}"
        )
    if name in (_TREE, _PREFIX):
        return b""
    if not name.startswith(_PREFIX):
        raise UnsafeArchiveError(f"refusing member {shown(name)!r}: outside {fmt.TREE_PREFIX}/")
    rel = name[len(_PREFIX) :]
    if rel.endswith(b"/"):
        rel = rel[:-1]
    parts = rel.split(b"/")
    if (
        b"" not in parts
        and b"." not in parts
        and b".." not in parts
        and max(map(len, parts)) <= fmt.MAX_NAME_BYTES
    ):
        return rel  # the common case, decided without a Python-level loop
    for part in parts:
        if part in (b"", b".", b".."):
            raise UnsafeArchiveError(
                f"refusing member {shown(name)!r}: path component {shown(part)!r} not allowed"
            )
        if len(part) > fmt.MAX_NAME_BYTES:
            raise LimitExceededError(
                f"refusing member {shown(name)!r}: a component is {len(part)} bytes, "
                f"limit {fmt.MAX_NAME_BYTES}"
            )
    return rel


def check_path(rel: bytes) -> None:
    """Check a path relative to the tree root (``b""``: the root) by the member-name rules.

    :raises ArchiveError: what :func:`parse_member_name` raises for ``tree/<rel>``, or
        :class:`UnsafeArchiveError` for a path it would only accept in another spelling
        (a trailing ``/``).
    """
    if 0 < len(rel) <= fmt.MAX_NAME_BYTES and 0 not in rel:
        # parse_member_name's common case, without building the member name.
        wrapped = b"/" + rel + b"/"
        if wrapped.find(b"//") < 0 and wrapped.find(b"/./") < 0 and wrapped.find(b"/../") < 0:
            return
    if parse_member_name(_PREFIX + rel) != rel:
        raise UnsafeArchiveError(f"refusing path {shown(rel)!r}: not in its plain spelling")


def link_stays_inside(link: bytes, target: bytes, lookup: Callable[[bytes], bytes | None]) -> bool:
    """Whether symlink *link* (a relative tree path) pointing at *target* stays inside.

    The target is resolved from the link's directory component by component. Where a
    prefix is itself a symlink (``lookup`` returns its target), resolution follows it as
    the kernel would, so ``s -> ..`` plus ``t -> s/../x`` is judged by where it really
    leads, not by how it reads. Absolute targets and climbing above the root are outside.
    A loop, or any chain of more than 40 links, is inside: the kernel follows no more
    than 40 (ELOOP), so it leads nowhere at all and is restored as it was stored.
    """
    if not target or target.startswith(b"/"):
        return False
    stack = link.split(b"/")[:-1] if link else []
    pending = list(reversed(target.split(b"/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not stack:
                return False
            stack.pop()
            continue
        stack.append(part)
        followed = lookup(b"/".join(stack))
        if followed is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return True  # the kernel gives up sooner: nothing past here is reachable
            if not followed or followed.startswith(b"/"):
                return False
            stack.pop()
            pending.extend(reversed(followed.split(b"/")))
    return True
