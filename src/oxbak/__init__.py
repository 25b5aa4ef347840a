"""oxbak: a state directory into one ``.oxbak`` file and back, safely and fast.

The public API::

    import oxbak

    result = oxbak.pack("state", "state.oxbak")          # -> PackResult
    manifest = oxbak.read_manifest("state.oxbak")         # -> Manifest
    info = oxbak.read_info("state.oxbak")                 # -> ArchiveInfo (.manifest, .toc)
    report = oxbak.verify("state.oxbak")                  # -> VerifyResult (.ok, .problems)
    for entry in oxbak.list_entries("state.oxbak"): ...   # -> EntryInfo
    oxbak.cat("state.oxbak", "seeds/000001.json", sys.stdout.buffer)
    for change in oxbak.diff("state.oxbak", "state"): ... # -> Change
    oxbak.unpack("state.oxbak", "restored")               # -> UnpackResult

    oxbak.pack("state", "state.oxbak.age", recipients=["age1…"])   # encrypted (age)
    oxbak.unpack("state.oxbak.age", "restored", identities=["key.txt"])

Archives are paths or binary file objects. Every deliberate error is an ``OxbakError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import (
    ArchiveError,
    CorruptArchiveError,
    DestinationError,
    EnvelopeError,
    IdentityError,
    InputError,
    IntegrityError,
    LimitExceededError,
    ManifestError,
    NotAnArchiveError,
    OutputError,
    OutputExistsError,
    OxbakError,
    RecipientError,
    SourceError,
    UnsafeArchiveError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:
    from .commit import recover
    from .compare import Change, diff
    from .envelope import EnvelopeInfo
    from .manifest import Manifest
    from .reader import read_manifest
    from .restore import EntryInfo, UnpackResult, VerifyResult, cat, list_entries, unpack, verify
    from .source import ArchiveInfo, read_info
    from .writer import PackResult, pack

# The rest of the API is imported on first use, so that `oxbak info` does not pay for the
# writer's and the unpacker's imports at every start.
_LAZY = {
    "recover": "commit",
    "Change": "compare",
    "diff": "compare",
    "EnvelopeInfo": "envelope",
    "Manifest": "manifest",
    "EntryInfo": "restore",
    "list_entries": "restore",
    "cat": "restore",
    "read_manifest": "reader",
    "ArchiveInfo": "source",
    "read_info": "source",
    "UnpackResult": "restore",
    "VerifyResult": "restore",
    "unpack": "restore",
    "verify": "restore",
    "PackResult": "writer",
    "pack": "writer",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oxbak' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ArchiveError",
    "ArchiveInfo",
    "Change",
    "CorruptArchiveError",
    "DestinationError",
    "EntryInfo",
    "EnvelopeError",
    "EnvelopeInfo",
    "IdentityError",
    "InputError",
    "IntegrityError",
    "LimitExceededError",
    "Manifest",
    "ManifestError",
    "NotAnArchiveError",
    "OutputError",
    "OutputExistsError",
    "OxbakError",
    "PackResult",
    "RecipientError",
    "SourceError",
    "UnpackResult",
    "UnsafeArchiveError",
    "UnsupportedVersionError",
    "VerifyResult",
    "__version__",
    "cat",
    "diff",
    "list_entries",
    "pack",
    "read_info",
    "read_manifest",
    "recover",
    "unpack",
    "verify",
]


def __dir__() -> list[str]:
    return __all__
