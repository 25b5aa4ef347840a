"""Tests that need a system tool (GNU tar, zstd, ...) on PATH.

Locally a missing tool skips the test. With ``OXBAK_REQUIRE_TOOLS=1`` (set by ``.ci/run``,
which installs the tools first) a missing tool fails it instead, so CI cannot go green by
silently skipping interop tests.

Use the marker ``@pytest.mark.tools("tar", "zstd")`` (handled in conftest.py), or call
``require_tool("tar", "zstd")`` inside a test.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ENV = "OXBAK_REQUIRE_TOOLS"


def tools_required() -> bool:
    """Whether a missing tool is a failure rather than a skip."""
    return os.environ.get(REQUIRE_ENV) == "1"


def require_tool(*names: str) -> None:
    """Skip the running test if any of ``names`` is not on PATH; fail under OXBAK_REQUIRE_TOOLS=1."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    reason = f"needs {', '.join(missing)} on PATH"
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)
