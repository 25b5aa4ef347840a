"""Constants of the ``.oxbak`` container, version 2 (readers also read version 1).

``docs/FORMAT.md`` is the normative description; every number here appears there and a
test keeps the two in step.
"""

from __future__ import annotations

from typing import Final, Literal

#: The kinds of tree entry an archive holds.
EntryType = Literal["file", "dir", "symlink", "hardlink"]

FORMAT_NAME: Final = "oxbak"
FORMAT_VERSION: Final = 2
#: Incremental archives (packed against a base, FORMAT.md §11). Full archives keep
#: FORMAT_VERSION, so their bytes stay those of version 2 and version-2 readers refuse
#: only what they would misread.
INCREMENTAL_VERSION: Final = 3
#: Version 1 archives: one frame for the whole tree, the index in ``index.jsonl``.
FIRST_SEEKABLE_VERSION: Final = 2
INDEX_FORMAT_NAME: Final = "oxbak-index"
INDEX_VERSION: Final = 1
DIGEST_NAME: Final = "blake3-256"
DIGEST_SIZE: Final = 32

MANIFEST_NAME: Final = "manifest.json"
TREE_PREFIX: Final = "tree"
INDEX_NAME: Final = "index.jsonl"
TOC_NAME: Final = "toc.msgpack"
TOC_FORMAT_NAME: Final = "oxbak-toc"
TOC_VERSION: Final = 1
FOOTER_FORMAT_NAME: Final = "oxbak-footer"
PAX_HEADER_NAME: Final = b"././@PaxHeader"

BLOCK_SIZE: Final = 512
RECORD_SIZE: Final = 10240
SKIPPABLE_MAGIC: Final = 0x184D2A50
#: The skippable frame that locates the table of contents (version 2).
FOOTER_MAGIC: Final = 0x184D2A5B
#: The zstd seekable format: the seek table's skippable frame and its footer's magic.
SEEK_TABLE_MAGIC: Final = 0x184D2A5E
SEEKABLE_MAGIC: Final = 0x8F92EAB1
#: Version 1 only: spare bytes after frame 1, and spaces after the manifest JSON.
MANIFEST_RESERVE: Final = 1024
MANIFEST_SLACK: Final = 512

#: A frame ends before the next member header once it holds at least this many bytes.
FRAME_TARGET: Final = 1024 * 1024
#: A member's data is also cut at every multiple of this many bytes from its start.
FRAME_SPLIT: Final = 4 * 1024 * 1024
#: TOC records per block (a block is also closed once its paths and targets pass 1 MiB).
TOC_BLOCK_ENTRIES: Final = 4096
TOC_BLOCK_NAME_BYTES: Final = 1024 * 1024

DEFAULT_LEVEL: Final = 3
MIN_LEVEL: Final = 1
MAX_LEVEL: Final = 19

MAX_WINDOW_SIZE: Final = 32 * 1024 * 1024
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024
MAX_PAX_BYTES: Final = 64 * 1024
MAX_INDEX_LINE_BYTES: Final = 64 * 1024
MAX_FRAME_BYTES: Final = 32 * 1024 * 1024
MAX_FRAMES: Final = 1 << 27
MAX_FOOTER_BYTES: Final = 64 * 1024
MAX_TOC_HEADER_BYTES: Final = 16 * 1024 * 1024
MAX_TOC_BLOCK_BYTES: Final = 16 * 1024 * 1024
MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255
#: Extended attributes of one entry: a name is at most this long (Linux's XATTR_NAME_MAX)…
MAX_XATTR_NAME_BYTES: Final = 255
#: … and its ``SCHILY.xattr.*`` pax records take at most this many bytes, so that with a
#: path and a link target of 4 KiB each they always fit one pax header (MAX_PAX_BYTES).
MAX_XATTR_BYTES: Final = 48 * 1024

#: Files up to this size are read whole, checked and retried until consistent.
SMALL_FILE_MAX: Final = 8 * 1024 * 1024
READ_ATTEMPTS: Final = 5
#: A file whose mtime or ctime is not this much older than its base's ``created_at`` is
#: read again by an incremental pack: a timestamp tick (2 s on FAT) may hide a change.
RACY_WINDOW_NS: Final = 2_000_000_000
