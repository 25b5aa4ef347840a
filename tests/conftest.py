"""Shared fixtures and Hypothesis profiles (select with HYPOTHESIS_PROFILE=dev|ci|thorough)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

from s3server import S3Server, running_server  # noqa: E402  (needs the sys.path line above)
from tools import require_tool  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=15)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tools(*names): needs these programs on PATH; skipped without them, "
        "failed without them under OXBAK_REQUIRE_TOOLS=1 (CI)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply ``@pytest.mark.tools(...)``: see tests/tools.py."""
    for mark in item.iter_markers(name="tools"):
        require_tool(*mark.args)


@pytest.fixture(autouse=True)
def _fixed_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin created_at so archives made in tests are reproducible."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``torture`` tests only under ``make torture`` (OXBAK_TORTURE=1)."""
    if os.environ.get("OXBAK_TORTURE"):
        return
    skip = pytest.mark.skip(reason="long sweep: run with `make torture`")
    for item in items:
        if "torture" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server on loopback for the whole session (tests/s3server.py)."""
    with running_server(tmp_path_factory.mktemp("s3server")) as server:
        yield server


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory that user 65534 can reach (pytest's own are root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="oxbak-shared-"))
    try:
        os.chmod(where, 0o755)
        yield where
    finally:
        shutil.rmtree(where)
