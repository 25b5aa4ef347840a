"""Constants of the ``.oxbak`` container, version 1.

``docs/FORMAT.md`` is the normative description; every number here appears there and a
test keeps the two in step.
"""

from __future__ import annotations

from typing import Final, Literal

#: The kinds of tree entry an archive holds.
EntryType = Literal["file", "dir", "symlink", "hardlink"]

FORMAT_NAME: Final = "oxbak"
FORMAT_VERSION: Final = 1
INDEX_FORMAT_NAME: Final = "oxbak-index"
INDEX_VERSION: Final = 1
DIGEST_NAME: Final = "blake3-256"
DIGEST_SIZE: Final = 32

MANIFEST_NAME: Final = "manifest.json"
TREE_PREFIX: Final = "tree"
INDEX_NAME: Final = "index.jsonl"
PAX_HEADER_NAME: Final = b"././@PaxHeader"

BLOCK_SIZE: Final = 512
RECORD_SIZE: Final = 10240
SKIPPABLE_MAGIC: Final = 0x184D2A50
#: Spare bytes kept after the first frame so the manifest can be rewritten in place.
MANIFEST_RESERVE: Final = 1024
#: Spaces appended to the manifest JSON so a rewrite with larger numbers still fits.
MANIFEST_SLACK: Final = 512

DEFAULT_LEVEL: Final = 3
MIN_LEVEL: Final = 1
MAX_LEVEL: Final = 19

MAX_WINDOW_SIZE: Final = 32 * 1024 * 1024
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024
MAX_PAX_BYTES: Final = 64 * 1024
MAX_INDEX_LINE_BYTES: Final = 64 * 1024
MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255

#: Files up to this size are read whole, checked and retried until consistent.
SMALL_FILE_MAX: Final = 8 * 1024 * 1024
READ_ATTEMPTS: Final = 5
