"""Archives handed over as a pipe would hand them: readable front to back, nothing more."""

from __future__ import annotations

import io
from typing import Any


class Unseekable(io.RawIOBase):
    """A pipe-like reader over bytes: no seek, no tell, no size."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        return self._inner.readinto(buf)
