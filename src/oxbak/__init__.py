"""oxbak: a state directory into one ``.oxbak`` file and back, safely and fast.

The public API::

    import oxbak

    result = oxbak.pack("state", "state.oxbak")          # -> PackResult
    manifest = oxbak.read_manifest("state.oxbak")         # -> Manifest
    report = oxbak.verify("state.oxbak")                  # -> VerifyResult (.ok, .problems)
    for entry in oxbak.list_entries("state.oxbak"): ...   # -> EntryInfo
    oxbak.unpack("state.oxbak", "restored")               # -> UnpackResult

Archives are paths or binary file objects. Every deliberate error is an ``OxbakError``.
"""

from __future__ import annotations

from ._version import __version__
from .destinations import recover
from .errors import (
    ArchiveError,
    CorruptArchiveError,
    DestinationError,
    InputError,
    IntegrityError,
    LimitExceededError,
    ManifestError,
    OutputError,
    OutputExistsError,
    OxbakError,
    SourceError,
    UnsafeArchiveError,
    UnsupportedVersionError,
)
from .manifest import Manifest
from .reader import EntryInfo, list_entries, read_manifest
from .unpack import UnpackResult, VerifyResult, unpack, verify
from .writer import PackResult, pack

__all__ = [
    "ArchiveError",
    "CorruptArchiveError",
    "DestinationError",
    "EntryInfo",
    "InputError",
    "IntegrityError",
    "LimitExceededError",
    "Manifest",
    "ManifestError",
    "OutputError",
    "OutputExistsError",
    "OxbakError",
    "PackResult",
    "SourceError",
    "UnpackResult",
    "UnsafeArchiveError",
    "UnsupportedVersionError",
    "VerifyResult",
    "__version__",
    "list_entries",
    "pack",
    "read_manifest",
    "recover",
    "unpack",
    "verify",
]


def __dir__() -> list[str]:
    return __all__
