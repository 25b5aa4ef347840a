"""Tests that need a system tool (GNU tar, zstd, ...) on PATH.

Locally a missing tool skips the test. With ``OXBAK_REQUIRE_TOOLS=1`` (set by ``.ci/run``,
which installs the tools first) a missing tool fails it instead, so CI cannot go green by
silently skipping interop tests.

Use the marker ``@pytest.mark.tools("tar", "zstd")`` (handled in conftest.py), or call
``require_tool("tar", "zstd")`` inside a test.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import oxbak

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


NOBODY = 65534


def run_oxbak(*args: str, user: int | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m oxbak ARGS`` from this checkout; as *user* through ``setpriv`` if given.

    Another user must be able to read the checkout to import oxbak from it: where it
    cannot (a checkout in a private directory, as ``mktemp -d`` makes), the test is
    skipped, saying so.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(oxbak.__file__).parent.parent)}
    prefix: list[str] = []
    if user is not None:
        require_tool("setpriv")
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        if not _can_import(user, env["PYTHONPATH"]):
            pytest.skip(f"user {user} cannot read this checkout to import oxbak from it")
    command = [*prefix, sys.executable, "-m", "oxbak", *args]
    return subprocess.run(command, capture_output=True, env=env, timeout=300)


@functools.cache
def _can_import(user: int, path: str) -> bool:
    probe = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
         sys.executable, "-c", "import oxbak"],
        capture_output=True, env={**os.environ, "PYTHONPATH": path}, timeout=60,
    )  # fmt: skip
    return probe.returncode == 0


def _default_sigint() -> None:
    # A shell may start the test run with SIGINT ignored (background job); exec keeps an
    # ignored signal ignored, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sigint_default() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving a child SIGINT's default action if this process ignores it.

    For tests that interrupt a child with SIGINT, as Ctrl-C would.
    """
    return _default_sigint if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, poll: float = 0.005) -> None:
    """Poll *condition* every *poll* seconds until it holds; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(poll)
