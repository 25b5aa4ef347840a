"""Chains of archives (FORMAT.md §11): a full archive, then incrementals, each on the last.

Restoring an incremental needs every archive of its chain. :func:`check_chain` is what a
chain reader does first, before it creates anything: it reads only each archive's
manifest and table of contents.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError
from .locations import Archive
from .manifest import IncrementalManifest
from .source import TocSource, open_source

__all__ = ["check_chain"]


def check_chain(archives: Sequence[Archive]) -> list[str]:
    """Check that *archives* form one chain, in order; return their ids.

    The first must be full; each next one's ``base.id`` must be the id of the one before
    it (its TOC member's BLAKE3-256, :meth:`~oxbak.source.TocSource.toc_id`). Their
    contents are not read: the TOCs bind them, and a restore checks them as it reads.

    :raises InputError: one line naming the archive that does not fit (or cannot be read
        through its TOC: a pipe, an encrypted or version-1 archive).
    :raises ArchiveError: an archive's manifest or TOC is damaged.
    """
    if not archives:
        raise InputError("a chain needs at least one archive")
    ids: list[str] = []
    for n, archive in enumerate(archives):
        with open_source(archive, whole=False, incremental=True) as source:
            if not isinstance(source, TocSource):
                raise InputError(
                    f"{source.name} cannot be part of a chain: only an unencrypted archive "
                    f"file of version 2 or later is read through its table of contents"
                )
            manifest = source.manifest
            base = manifest.base.id if isinstance(manifest, IncrementalManifest) else None
            if n == 0 and base is not None:
                raise InputError(
                    f"{source.name} is incremental (base {base[:16]}…): a chain starts "
                    f"with a full archive"
                )
            if n > 0 and base is None:
                raise InputError(
                    f"{source.name} is a full archive: after the first, a chain holds only "
                    f"incrementals"
                )
            if base is not None and base != ids[-1]:
                raise InputError(
                    f"{source.name} is not based on the archive before it "
                    f"({archives[n - 1]}): its base is {base[:16]}…, that archive is "
                    f"{ids[-1][:16]}…"
                )
            ids.append(source.toc_id())
    return ids

