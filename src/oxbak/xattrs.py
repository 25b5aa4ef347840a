"""Extended attributes, POSIX ACLs among them: read on pack, stored as pax records, restored.

An entry's attributes are a tuple of ``(name, value)`` pairs of bytes, sorted by name,
each name once (:data:`Xattrs`). POSIX ACLs are the attributes
``system.posix_acl_access`` and ``system.posix_acl_default`` and travel as such, in the
kernel's binary form, as GNU tar stores them. In the tar stream each attribute is one
``SCHILY.xattr.<name>=<value>`` pax record (the form GNU tar and bsdtar both write); an
ACL is also written as a ``SCHILY.acl.access`` / ``SCHILY.acl.default`` text record,
because bsdtar restores ACLs from those alone. Reading takes bsdtar's archives too: an
ACL there is only text, an attribute also a ``LIBARCHIVE.xattr.*`` record
(:func:`from_pax`). ``docs/FORMAT.md`` §4.1 is the contract.

Only four namespaces are stored: ``user.``, ``trusted.``, ``security.`` and the two ACLs.
Restoring never fails a restore: what cannot be set (a filesystem without xattrs, a
``trusted.`` attribute without root, a ``user.`` attribute on a symlink) is collected by
:class:`Applier` and reported as warnings, a few lines for the whole tree.
"""

from __future__ import annotations

import binascii
import errno
import grp
import os
import pwd
import re
import struct
from collections.abc import Callable, Mapping

from . import format as fmt
from .errors import CorruptArchiveError, LimitExceededError
from .paths import display, shown

__all__ = [
    "ACL_ACCESS",
    "ACL_DEFAULT",
    "ACL_RECORD_KEYS",
    "LIBARCHIVE_PREFIX",
    "PAX_PREFIX",
    "Applier",
    "Xattrs",
    "acl_binary",
    "acl_text",
    "check",
    "decode_name",
    "encode_name",
    "encoded_size",
    "from_pax",
    "pax_records",
    "read",
    "supported",
]

Xattrs = tuple[tuple[bytes, bytes], ...]

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
_ACLS = (ACL_ACCESS, ACL_DEFAULT)
_NAMESPACES = (b"user.", b"trusted.", b"security.")
_PRIVILEGED = (b"trusted.", b"security.")
PAX_PREFIX = b"SCHILY.xattr."
_ACL_RECORDS = {ACL_ACCESS: b"SCHILY.acl.access", ACL_DEFAULT: b"SCHILY.acl.default"}
#: The text records a reader turns into an ACL when its binary attribute is absent.
ACL_RECORD_KEYS = frozenset(_ACL_RECORDS.values())
#: libarchive's own attribute records: URL-encoded name, base64 value (FORMAT.md §4.1).
LIBARCHIVE_PREFIX = b"LIBARCHIVE.xattr."
# What a SCHILY.xattr record adds to its escaped name and value: its length (at most 5
# digits under MAX_PAX_BYTES), the space, the prefix, "=" and the newline.
_RECORD_OVERHEAD = 5 + 1 + len(PAX_PREFIX) + 1 + 1


def supported(name: bytes) -> bool:
    """Whether oxbak stores and restores an attribute of this name."""
    if name in _ACLS:
        return True
    for prefix in _NAMESPACES:
        if name.startswith(prefix):
            return len(name) > len(prefix)
    return False


def encode_name(name: bytes) -> bytes:
    """*name* as the key of a pax record: ``%`` and ``=`` escaped, as GNU tar does."""
    if b"%" in name or b"=" in name:
        return name.replace(b"%", b"%25").replace(b"=", b"%3D")
    return name


_ESCAPE = re.compile(rb"%(25|3D)")


def decode_name(key: bytes) -> bytes:
    """The attribute name a ``SCHILY.xattr.`` key (without the prefix) stands for."""
    if b"%" not in key:
        return key
    return _ESCAPE.sub(lambda m: b"%" if m[1] == b"25" else b"=", key)


def encoded_size(xattrs: Xattrs) -> int:
    """The bytes *xattrs* take as ``SCHILY.xattr`` records (at most: lengths as 5 digits)."""
    return sum(len(encode_name(n)) + len(v) + _RECORD_OVERHEAD for n, v in xattrs)


def check(xattrs: list[tuple[bytes, bytes]], member: bytes) -> Xattrs:
    """*xattrs* read from an archive, sorted, after the format's rules (FORMAT.md §4.1).

    A name must be non-empty, hold no NUL byte and be at most 255 bytes, and appear once;
    all of them together must stay under ``MAX_XATTR_BYTES``. A name of a namespace oxbak
    does not restore is kept: the restore skips it with a warning.

    :raises CorruptArchiveError: a malformed or repeated name.
    :raises LimitExceededError: too many bytes of attributes.
    """
    for name, _ in xattrs:
        fault = (
            "is empty"
            if not name
            else "holds a NUL byte"
            if b"\0" in name
            else f"is longer than {fmt.MAX_XATTR_NAME_BYTES} bytes"
            if len(name) > fmt.MAX_XATTR_NAME_BYTES
            else ""
        )
        if fault:
            raise CorruptArchiveError(
                f"member {shown(member)!r}: extended attribute name {shown(name[:64])!r} {fault}"
            )
    ordered = tuple(sorted(xattrs))
    for (a, _), (b, _) in zip(ordered, ordered[1:], strict=False):
        if a == b:
            raise CorruptArchiveError(
                f"member {shown(member)!r}: extended attribute {shown(a)!r} appears twice"
            )
    size = encoded_size(ordered)
    if size > fmt.MAX_XATTR_BYTES:
        raise LimitExceededError(
            f"member {shown(member)!r}: its extended attributes take {size} bytes, "
            f"limit {fmt.MAX_XATTR_BYTES}"
        )
    return ordered


# -- pack ----------------------------------------------------------------------------------


def read(path: bytes) -> tuple[Xattrs, list[bytes]]:
    """The attributes of *path* (never following a symlink), and the names left out.

    Names of namespaces oxbak does not store are left out (e.g. ``system.nfs4_acl``). A
    filesystem without attributes has none.

    :raises OSError: the attributes cannot be listed or read (permission, I/O error).
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT):
            return (), []  # no attributes here, or vanished: the file's read says so
        raise
    if not names:
        return (), []
    found: list[tuple[bytes, bytes]] = []
    left_out: list[bytes] = []
    for text in names:
        name = os.fsencode(text)
        if not supported(name):
            left_out.append(name)
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue  # removed between the listing and the read
            raise
        found.append((name, value))
    return tuple(sorted(found)), sorted(left_out)


_ACL_TAGS = {1: "user", 2: "user", 4: "group", 8: "group", 0x10: "mask", 0x20: "other"}
_NAMED = (2, 8)


def acl_text(value: bytes, names: Callable[[int, int], tuple[str, str]]) -> bytes | None:
    """A binary POSIX ACL as star's text form (``user::rw-,user:daemon:rw-:1,…``).

    That is the form bsdtar writes and reads in ``SCHILY.acl.*`` records, and GNU tar
    reads it too. *names* gives the user and group names of ids (``""``: none, then the
    id stands for the name). None if *value* is not an ACL of version 2.
    """
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        return None
    entries: list[str] = []
    for offset in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, offset)
        kind = _ACL_TAGS.get(tag)
        if kind is None or perm > 7:
            return None
        bits = ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")
        if tag in _NAMED:
            user, group = names(ident, ident)
            who = (user if tag == 2 else group) or str(ident)
            entries.append(f"{kind}:{who}:{bits}:{ident}")
        else:
            entries.append(f"{kind}::{bits}")
    return ",".join(entries).encode()


_TEXT_TAGS: dict[bytes, tuple[int, int]] = {
    # tag name -> (the tag of the owner's entry, of a named entry; 0: none)
    b"user": (1, 2),
    b"u": (1, 2),
    b"group": (4, 8),
    b"g": (4, 8),
    b"mask": (0x10, 0),
    b"m": (0x10, 0),
    b"other": (0x20, 0),
    b"o": (0x20, 0),
}
_PERMS = re.compile(rb"[r-][w-][x-]")
_UNDEFINED_ID = 0xFFFFFFFF  # the id of the entries that name no one
_MAX_ACL_ID = _UNDEFINED_ID - 1


class _BadEntry(Exception):
    pass


def acl_binary(text: bytes, member: bytes, key: bytes) -> bytes:
    """Star's text form of an ACL (a ``SCHILY.acl.*`` record) in the kernel's binary form.

    The inverse of :func:`acl_text`. A named entry's id is its fourth field when there is
    one (``user:daemon:rw-:1``), as the binary ACLs oxbak stores are by id too; else its
    name when that is a number (what bsdtar writes for an id without a name); else the
    name is looked up on this machine. Entries come out sorted by tag, then id: the only
    order the kernel takes.

    :raises CorruptArchiveError: a malformed entry, a repeated one, or a set of entries
        that is not an ACL (one owner, owning group and other entry each; a mask when
        there are named entries); a name without id unknown on this machine.
    """
    entries: dict[tuple[int, int], int] = {}
    for raw in text.split(b","):
        entry = raw.strip(b" \t")
        try:
            tag, ident, perm = _acl_entry(entry)
        except _BadEntry as exc:
            raise CorruptArchiveError(
                f"member {shown(member)!r}: {shown(key)} entry {shown(entry[:64])!r} "
                f"{exc.args[0]}"
            ) from None
        if (tag, ident) in entries:
            raise CorruptArchiveError(
                f"member {shown(member)!r}: {shown(key)} repeats entry {shown(entry[:64])!r}"
            )
        entries[tag, ident] = perm
    tags = [tag for tag, _ in entries]
    if (
        any(tags.count(t) != 1 for t in (1, 4, 0x20))
        or (2 in tags or 8 in tags)
        and 0x10 not in tags
    ):
        raise CorruptArchiveError(
            f"member {shown(member)!r}: {shown(key)} is not an ACL (it needs one user::, "
            f"group:: and other:: entry, and a mask:: entry with named ones)"
        )
    return struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )


def _acl_entry(entry: bytes) -> tuple[int, int, int]:
    """One text entry as (tag, id, permission bits)."""
    fields = entry.split(b":")
    tags = _TEXT_TAGS.get(fields[0])
    if tags is None:
        raise _BadEntry("has an unknown tag")
    owner_tag, named_tag = tags
    if not named_tag and len(fields) == 2:
        fields.insert(1, b"")  # "other:r--", the short form libarchive also reads
    if len(fields) not in (3, 4) or not named_tag and len(fields) == 4:
        raise _BadEntry("has the wrong number of fields")
    _, who, bits, *number = fields
    if not _PERMS.fullmatch(bits):
        raise _BadEntry("has malformed permissions")
    perm = (4 if bits[0:1] == b"r" else 0) | (2 if bits[1:2] == b"w" else 0)
    perm |= 1 if bits[2:3] == b"x" else 0
    if not who:
        if number:
            raise _BadEntry("has an id but no name")
        return owner_tag, _UNDEFINED_ID, perm
    if not named_tag:
        raise _BadEntry("names someone")
    digits = number[0] if number else who if who.isascii() and who.isdigit() else b""
    if number and not (digits.isascii() and digits.isdigit()):
        raise _BadEntry("has an id that is not a number")
    if digits:
        if len(digits) > 10 or int(digits) > _MAX_ACL_ID:
            raise _BadEntry("has an id out of range")
        return named_tag, int(digits), perm
    found = _id_of(who, named_tag == 2)
    if found is None:
        raise _BadEntry(
            f"names a {'user' if named_tag == 2 else 'group'} unknown here, without its id"
        )
    return named_tag, found, perm


def _id_of(name: bytes, user: bool) -> int | None:
    text = name.decode("utf-8", "surrogateescape")
    try:
        return pwd.getpwnam(text).pw_uid if user else grp.getgrnam(text).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


_URL_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _libarchive_value(value: bytes, member: bytes, key: bytes) -> bytes:
    # libarchive writes base64 without its '=' padding.
    try:
        return binascii.a2b_base64(value + b"=" * (-len(value) % 4), strict_mode=True)
    except binascii.Error:
        raise CorruptArchiveError(
            f"member {shown(member)!r}: pax record {shown(key[:80])!r} is not base64"
        ) from None


def from_pax(records: Mapping[bytes, bytes], member: bytes) -> Xattrs:
    """The attributes a member's pax records give, checked (:func:`check`).

    ``SCHILY.xattr.*`` records give them as GNU tar and oxbak write them. A
    ``LIBARCHIVE.xattr.*`` record (bsdtar) gives one too, and replaces the
    ``SCHILY.xattr.*`` record of the same key: bsdtar writes that twin with the name
    URL-encoded beyond GNU tar's escapes, which only its own record says how to undo, and
    may be told to write its own record alone. An ACL's ``SCHILY.acl.*`` text record
    gives the binary attribute when that is absent, as in bsdtar's archives; oxbak's own
    archives carry both, and the text is then not even read.
    """
    found: list[tuple[bytes, bytes]] = []
    libarchive = [key for key in records if key.startswith(LIBARCHIVE_PREFIX)]
    twins = {PAX_PREFIX + key[len(LIBARCHIVE_PREFIX) :] for key in libarchive}
    for key, value in records.items():
        if key.startswith(PAX_PREFIX) and key not in twins:
            found.append((decode_name(key[len(PAX_PREFIX) :]), value))
    for key in libarchive:
        name = _URL_ESCAPE.sub(
            lambda m: bytes((int(m[1], 16),)), key[len(LIBARCHIVE_PREFIX) :]
        )
        found.append((name, _libarchive_value(records[key], member, key)))
    for name, key in _ACL_RECORDS.items():
        text = records.get(key)
        if text and PAX_PREFIX + name not in records:
            found.append((name, acl_binary(text, member, key)))
    return check(found, member) if found else ()


def pax_records(
    xattrs: Xattrs,
    record: Callable[[bytes, bytes], bytes],
    names: Callable[[int, int], tuple[str, str]],
    room: int,
) -> list[bytes]:
    """The pax records of *xattrs*: ACL text records first, then ``SCHILY.xattr.*``.

    The text records only help bsdtar (oxbak and GNU tar restore the binary attribute):
    they are left out when they would take the header past *room* bytes.
    """
    plain = [record(PAX_PREFIX + encode_name(n), v) for n, v in xattrs]
    texts: list[bytes] = []
    for name, value in xattrs:
        key = _ACL_RECORDS.get(name)
        text = acl_text(value, names) if key is not None else None
        if key is not None and text is not None:
            texts.append(record(key, text))
    if texts and sum(map(len, texts)) + sum(map(len, plain)) > room:
        texts = []
    return texts + plain


# -- restore -------------------------------------------------------------------------------


class Applier:
    """Sets a restored entry's attributes, and remembers what could not be set.

    Plain attributes go on before the entry's mode is set (an unprivileged user needs
    write permission for ``user.`` ones), ACLs after it: chmod rewrites an ACL's mask
    entry, and an ACL set last carries the mode's group bits with it as packed.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.root = os.geteuid() == 0
        # reason -> path -> the names not restored
        self._failed: dict[str, dict[bytes, list[bytes]]] = {}

    def plain(self, target: int | bytes, rel: bytes, xattrs: Xattrs) -> None:
        """Set every attribute but the ACLs on *target* (a descriptor, or a path not followed)."""
        if self.enabled:
            for name, value in xattrs:
                if name not in _ACLS:
                    self._set(target, rel, name, value)

    def acls(self, target: int | bytes, rel: bytes, xattrs: Xattrs) -> None:
        """Set the ACLs of *xattrs* on *target* (after its mode)."""
        if self.enabled:
            for name, value in xattrs:
                if name in _ACLS:
                    self._set(target, rel, name, value)

    def _set(self, target: int | bytes, rel: bytes, name: bytes, value: bytes) -> None:
        if not supported(name):
            self._note("namespace not restored by oxbak", rel, name)
            return
        if not self.root and name.startswith(_PRIVILEGED):
            self._note("only root may set them", rel, name)
            return
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            self._note(exc.strerror or str(exc), rel, name)

    def take(self) -> dict[str, dict[bytes, list[bytes]]]:
        """What could not be set so far, forgotten here (a worker's, for :meth:`add`)."""
        failed, self._failed = self._failed, {}
        return failed

    def add(self, failed: dict[str, dict[bytes, list[bytes]]]) -> None:
        """Remember what another process could not set (from its :meth:`take`)."""
        for reason, paths in failed.items():
            for rel, names in paths.items():
                self._failed.setdefault(reason, {}).setdefault(rel, []).extend(names)

    def _note(self, reason: str, rel: bytes, name: bytes) -> None:
        self._failed.setdefault(reason, {}).setdefault(rel, []).append(name)

    def warnings(self, shown_paths: int = 5) -> list[str]:
        """One line per reason, naming the first few entries and their attributes."""
        lines: list[str] = []
        for reason, paths in self._failed.items():
            named = [
                f"{display(rel) if rel else '.'!r} ({', '.join(display(n) for n in names)})"
                for rel, names in list(paths.items())[:shown_paths]
            ]
            more = len(paths) - len(named)
            lines.append(
                f"extended attributes not restored on {len(paths)} entr"
                f"{'y' if len(paths) == 1 else 'ies'} ({reason}): {', '.join(named)}"
                + (f" and {more} more" if more > 0 else "")
            )
        return lines
