"""Whose restored files are whose: an archive's owners mapped to this machine's ids.

Each member carries its owner's numeric ids and the names the packing machine knew for
them (the ustar ``uname``/``gname`` fields; empty in archives of earlier writers). As
root, by default, a name that exists here wins over the stored id (the same user may have
another uid on this machine), and the stored id is used when the name is unknown or not
stored, as GNU tar, restic and borg do; ``numeric`` uses the ids alone, ``none`` leaves
every entry to whoever restores. Anyone but root cannot give files away: ownership is
then not restored, and when the archive's owners differ from the current user one
warning says so.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Literal, get_args

from .errors import OxbakError
from .paths import display

__all__ = ["OwnerMode", "Owners"]

#: ``"name"``: by name, else by id; ``"numeric"``: by id; ``"none"``: not restored.
OwnerMode = Literal["name", "numeric", "none"]


class Owners:
    """The owner of each restored entry, and what could not be done about it."""

    def __init__(self, mode: OwnerMode = "name") -> None:
        if mode not in get_args(OwnerMode):
            raise OxbakError(f"unknown owner mode {mode!r} (name, numeric or none)")
        self.mode = mode
        self.root = os.geteuid() == 0
        #: Whether entries are given to their owners (chown): as root, unless ``none``.
        self.chown = self.root and mode != "none"
        self._watch = not self.root and mode != "none"
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}
        self._me = os.geteuid()
        self._my_groups = {os.getegid(), *os.getgroups()}
        self._others = 0
        self._example = ""

    def ids(self, rel: bytes, uid: int, gid: int, uname: str, gname: str) -> tuple[int, int]:
        """The uid and gid the entry at *rel* is to have here."""
        if self.mode == "name":
            if uname:
                found = self._uids.get(uname, -1)
                if found == -1:
                    found = self._uids[uname] = _uid_of(uname)
                if found is not None:
                    uid = found
            if gname:
                found = self._gids.get(gname, -1)
                if found == -1:
                    found = self._gids[gname] = _gid_of(gname)
                if found is not None:
                    gid = found
        if self._watch and (uid != self._me or gid not in self._my_groups):
            if not self._others:
                owner = f"{uname or uid}:{gname or gid}"
                self._example = f"{display(rel) if rel else '.'!r} ({owner})"
            self._others += 1
        return uid, gid

    def warnings(self) -> list[str]:
        """The one warning of an unprivileged restore of other users' files, if any."""
        if not self._others:
            return []
        n = self._others
        return [
            f"ownership not restored (only root can give files to other owners): {n} "
            f"entr{'y' if n == 1 else 'ies'} belonged to other users or groups than the "
            f"current one, e.g. {self._example}; they now belong to the current user"
        ]


def _uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def _gid_of(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None
