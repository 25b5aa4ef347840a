"""Every error oxbak raises on purpose.

The hierarchy::

    OxbakError                      exit 1 unless noted
    ├── SourceError                 the directory to pack is missing or unreadable
    ├── OutputExistsError           the output archive exists and --force was not given
    ├── OutputError                 the archive cannot be written: disk full, I/O error
    ├── InputError                  the archive cannot be read: I/O error
    ├── DestinationError            DEST is unusable: not empty, no room, I/O failure
    ├── RecipientError              a public key to encrypt to is not one oxbak can use
    ├── IdentityError               encrypted, and no key given, or none that opens it
    └── ArchiveError                the archive cannot be trusted
        ├── CorruptArchiveError     damaged container: zstd, tar, truncation, garbage
        │   └── EnvelopeError       damaged age envelope: header, payload, truncation
        ├── ManifestError           the manifest is missing, malformed or mistyped
        │   ├── NotAnArchiveError   not an oxbak archive at all (random bytes, a .tar.zst)
        │   └── UnsupportedVersionError   written by a newer oxbak
        ├── UnsafeArchiveError      would write outside DEST, create a device, …
        ├── LimitExceededError      exceeds a declared or built-in bound
        └── IntegrityError          content does not match the index

Each class carries ``exit_code``; the command line maps errors to exit codes with it and
nothing else. ``OxbakError`` also subclasses ``Exception`` only, so ``except OxbakError``
catches everything oxbak raises deliberately.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .envelope import EnvelopeInfo

__all__ = [
    "ArchiveError",
    "CorruptArchiveError",
    "DestinationError",
    "EnvelopeError",
    "IdentityError",
    "IntegrityError",
    "LimitExceededError",
    "ManifestError",
    "InputError",
    "NotAnArchiveError",
    "OutputError",
    "OutputExistsError",
    "OxbakError",
    "RecipientError",
    "SourceError",
    "UnsafeArchiveError",
    "UnsupportedVersionError",
]


class OxbakError(Exception):
    """Base class of every error oxbak raises on purpose.

    Useful for ``try … except`` around any library call::

        try:
            oxbak.unpack("state.oxbak", "restored")
        except oxbak.OxbakError as exc:
            print(f"restore failed: {exc}")
    """

    exit_code: int = 1


class SourceError(OxbakError):
    """The directory to pack is missing, not a directory, or cannot be read."""


class OutputExistsError(OxbakError):
    """The output archive already exists and overwriting was not requested."""


class OutputError(OxbakError):
    """The archive cannot be written: the disk is full, an I/O error, a closed pipe."""


class InputError(OxbakError):
    """The archive cannot be read because of an I/O error (not because of its content)."""


class DestinationError(OxbakError):
    """The destination cannot take the restore (not empty, no room, I/O error)."""


class RecipientError(OxbakError):
    """A recipient to encrypt to is not a public key oxbak can use, or cannot be read."""


class IdentityError(OxbakError):
    """The archive is encrypted and cannot be opened with the identities given.

    No identity was given, an identity file cannot be read or is not one, or none of
    them matches a recipient of the archive. ``envelope`` is what the archive's age
    header says (an :class:`~oxbak.envelope.EnvelopeInfo`), when it was read.
    """

    def __init__(self, message: str, envelope: EnvelopeInfo | None = None) -> None:
        super().__init__(message)
        self.envelope = envelope


class ArchiveError(OxbakError):
    """The archive is not an intact, safe oxbak archive."""


class CorruptArchiveError(ArchiveError):
    """The container is damaged: zstd, tar structure, truncation or trailing bytes."""


class EnvelopeError(CorruptArchiveError):
    """The age envelope is damaged: its header, a chunk of its payload, or cut short."""


class ManifestError(ArchiveError):
    """The manifest is missing, not first, malformed, or of the wrong types."""


class NotAnArchiveError(ManifestError):
    """The input is not an oxbak archive: said as such, rather than "damaged".

    It is not zstd-compressed, or it is a tar that does not start with the manifest (any
    other ``.tar.zst``).
    """


class UnsupportedVersionError(ManifestError):
    """The archive's format version is newer than this oxbak understands."""


class UnsafeArchiveError(ArchiveError):
    """The archive asks for something unsafe, such as a path outside DEST or a device."""


class LimitExceededError(ArchiveError):
    """The archive exceeds a bound it declared itself or a built-in limit."""


class IntegrityError(ArchiveError):
    """Content does not match the integrity index.

    ``problems`` lists every mismatch found, one message each.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "integrity check failed"
        more = len(self.problems) - 1
        super().__init__(first if more <= 0 else f"{first} (and {more} more problems)")

    def __reduce__(self) -> tuple[type[IntegrityError], tuple[list[str]]]:
        # Raised in a worker process, it is pickled to the process that reports it.
        return IntegrityError, (self.problems,)
