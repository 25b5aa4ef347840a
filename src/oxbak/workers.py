"""Worker processes: tasks done in processes forked from this one, results in order.

Python runs one thread of Python code at a time, so the per-file work of a pack or an
unpack (system calls, hashing, tar headers) is spread over processes. Workers are forked
once the caller has what they need (a scan, a table of contents): they inherit it, and a
task is only a few numbers. Task *n* goes to worker ``n % count`` and results are taken
back in task order, so the order of the work done, and of its warnings, is the order of
the tasks whatever the number of workers.

A worker never outlives the process that forked it (``PR_SET_PDEATHSIG``): a pack or an
unpack that is killed leaves no process behind that could still write.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from ._fsutil import prctl
from .errors import OxbakError

# pickle and select are imported where they are used: `list` and `cat` import this
# module (for available_cores) and never start a worker (pickle alone is ~2 ms).

__all__ = ["Workers", "available_cores", "in_worker", "report"]

T = TypeVar("T")
R = TypeVar("R")

_HEAD = struct.Struct("<QB")  # payload length, kind
_RESULT, _ERROR, _REPORT = 0, 1, 2
_AHEAD = 2  # tasks handed to each worker before its first result is taken
_PR_SET_PDEATHSIG = 1
_STOPPING = {signal.SIGINT, signal.SIGTERM}

logger = logging.getLogger("oxbak")


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


class Workers(Generic[T, R]):
    """*count* processes forked now, each running *do* on the tasks it is given.

    What *do* logs through the ``oxbak`` logger in a worker is logged again here, with
    its result, in task order. An exception *do* raises is raised again here, in place
    of its result.
    """

    def __init__(
        self, count: int, do: Callable[[T], R], on_report: Callable[[int], None] | None = None
    ) -> None:
        self._do = do
        self._on_report = on_report
        self._parent = os.getpid()
        self._pids: list[int] = []
        self._tasks: list[int] = []  # the write end of each worker's task pipe
        self._results: list[int] = []  # the read end of each worker's result pipe
        # The tasks handed to each worker whose results are not read yet, oldest first.
        self._unread: list[collections.deque[int]] = [collections.deque() for _ in range(count)]
        self._early: dict[int, tuple[int, bytes]] = {}  # results read before their turn
        self._sent = self._taken = 0
        # Ctrl-C or a TERM now would land in fork()'s own hooks, which cannot raise it: the
        # signals wait until every worker is forked, and are raised below if they came.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
        try:
            for _ in range(count):
                self._fork(mask)
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.close(kill=True)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        except BaseException:  # the signal that came meanwhile
            self.close(kill=True)
            raise

    def _fork(self, mask: set[int | signal.Signals]) -> None:
        ends: list[int] = []
        try:
            task_r, task_w = os.pipe()
            ends += (task_r, task_w)
            result_r, result_w = os.pipe()
            ends += (result_r, result_w)
            pid = os.fork()
        except BaseException:
            for fd in ends:
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - the child, which never returns
            for fd in (*self._tasks, *self._results, task_w, result_r):
                os.close(fd)
            self._serve(task_r, result_w, mask)
        os.close(task_r)
        os.close(result_w)
        os.set_blocking(task_w, False)  # written between reads of the worker's results
        self._pids.append(pid)
        self._tasks.append(task_w)
        self._results.append(result_r)

    def __enter__(self) -> Workers[T, R]:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.close(kill=exc is not None)

    def submit(self, task: T) -> None:
        """Hand *task* to the next worker in turn; its result comes from :meth:`take`.

        A worker holds at most ``_AHEAD`` tasks whose results are not read yet: for one
        more, its oldest result is read and kept until taken. Writing a task never waits
        on a worker that is itself waiting to write a result.
        """
        worker = self._sent % len(self._pids)
        if len(self._unread[worker]) >= _AHEAD:
            self._read_early(worker)
        import pickle
        import select

        payload = pickle.dumps(task, pickle.HIGHEST_PROTOCOL)
        data = memoryview(_HEAD.pack(len(payload), _RESULT) + payload)
        fd = self._tasks[worker]
        while data:
            # A task larger than the pipe holds: read the worker's results meanwhile.
            ready = select.select([self._results[worker]], [fd], [])
            if ready[0]:
                self._read_early(worker)
            elif ready[1]:
                try:
                    data = data[os.write(fd, data) :]
                except BlockingIOError:
                    pass
                except BrokenPipeError:  # it is gone: say how
                    self._receive_from(worker)
                    raise
        self._unread[worker].append(self._sent)
        self._sent += 1

    def take(self) -> R:
        """The result of the oldest task whose result is not taken yet (or its error)."""
        number = self._taken
        self._taken += 1
        message = self._early.pop(number, None)
        if message is None:
            message = self._receive_from(number % len(self._pids))
        return self._unpack(message, number % len(self._pids))

    def map(self, tasks: Iterable[T]) -> Iterator[R]:
        """The result of every task, in order; tasks are taken from *tasks* as needed."""
        todo = iter(tasks)
        for task in itertools.islice(todo, len(self._pids) * _AHEAD):
            self.submit(task)
        while self._taken < self._sent:
            result = self.take()
            for task in itertools.islice(todo, 1):
                self.submit(task)
            yield result

    def close(self, *, kill: bool = False) -> None:
        """Stop the workers (at once with *kill*) and wait for them to end."""
        for fd in self._tasks:
            os.close(fd)  # a worker waiting for a task sees the end, and exits
        self._tasks = []
        if kill:
            for pid in filter(None, (max(pid, 0) for pid in self._pids)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for fd in self._results:
            os.close(fd)
        self._results = []
        for pid in self._pids:
            if pid > 0:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        self._pids = []

    def _receive_from(self, worker: int) -> tuple[int, bytes]:
        message = _receive(self._results[worker])
        while message is not None and message[0] == _REPORT:
            if self._on_report is not None:
                self._on_report(int.from_bytes(message[1], "little"))
            message = _receive(self._results[worker])
        if message is None:
            pid = self._pids[worker]
            _, status = os.waitpid(pid, 0)
            self._pids[worker] = -pid  # reaped
            how = (
                f"was killed by signal {os.WTERMSIG(status)}"
                if os.WIFSIGNALED(status)
                else f"exited with status {os.waitstatus_to_exitcode(status)}"
            )
            raise OxbakError(f"worker process {pid} {how} before finishing its work")
        if self._unread[worker]:
            self._unread[worker].popleft()
        return message

    def _read_early(self, worker: int) -> None:
        # With nothing to answer, a worker's pipe is readable only at its end: that raises.
        number = self._unread[worker][0] if self._unread[worker] else -1
        self._early[number] = self._receive_from(worker)

    def _unpack(self, message: tuple[int, bytes], worker: int) -> R:
        kind, payload = message
        import pickle

        value, records = pickle.loads(payload)
        for record in records:
            logger.handle(record)
        if kind == _ERROR:
            raise value
        return value  # type: ignore[no-any-return]

    def _serve(  # pragma: no cover - in the child
        self, tasks: int, results: int, mask: set[int | signal.Signals]
    ) -> None:
        """The worker's life: tasks in, results out, until the task pipe ends."""
        import pickle

        status = 0
        try:
            _die_with(self._parent)
            # Ctrl-C reaches the whole process group: the parent stops the workers. A TERM
            # aimed at a worker ends it; the parent says so.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            global _reports
            _reports = results
            records = _capture_log()
            while (message := _receive(tasks)) is not None:
                task = pickle.loads(message[1])
                kind = _RESULT
                try:
                    value: object = self._do(task)
                except BaseException as exc:  # noqa: BLE001 - handed to the parent
                    kind, value = _ERROR, _portable(exc)
                payload = pickle.dumps((value, records[:]), pickle.HIGHEST_PROTOCOL)
                records.clear()
                _send(results, kind, payload)
        except BaseException:  # noqa: BLE001 - the parent sees the pipe end, and says so
            status = 1
        finally:
            os._exit(status)  # never the parent's clean-up: it is not this process's


_reports = -1  # in a worker: where report() writes


def report(value: int) -> None:
    """From a task in a worker: hand *value* to the parent's *on_report* now (progress)."""
    _send(_reports, _REPORT, value.to_bytes(8, "little"))


def in_worker() -> bool:
    """Whether this process is a worker (:func:`report` reaches a parent)."""
    return _reports >= 0


def _die_with(parent: int) -> None:  # pragma: no cover - in the child
    """Be killed when *parent* ends, however it ends."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _capture_log() -> list[logging.LogRecord]:  # pragma: no cover - in the child
    """Hold what the ``oxbak`` logger says in this worker, for the parent to log."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            record.msg, record.args = record.getMessage(), None
            record.exc_info = record.exc_text = None
            records.append(record)

    logger.handlers = [Keep()]
    logger.propagate = False
    return records


def _portable(exc: BaseException) -> BaseException:
    """*exc*, or an :class:`OxbakError` of its message where it does not pickle as itself."""
    import pickle

    try:
        again = pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
        if type(again) is type(exc) and str(again) == str(exc):
            return exc
    except Exception:  # noqa: BLE001, S110 - replaced below
        pass
    return OxbakError(f"{type(exc).__name__} in a worker process: {exc}")


def _send(fd: int, kind: int, payload: bytes) -> None:
    data = memoryview(_HEAD.pack(len(payload), kind) + payload)
    while data:
        data = data[os.write(fd, data) :]


def _receive(fd: int) -> tuple[int, bytes] | None:
    """One message, or None at the end of the pipe (its writer is gone)."""
    head = _read(fd, _HEAD.size)
    if head is None:
        return None
    size, kind = _HEAD.unpack(head)
    payload = _read(fd, size)
    if payload is None:
        return None
    return kind, payload


def _read(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    left = size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


if sys.platform != "linux":  # pragma: no cover
    raise ImportError("oxbak.workers needs Linux (fork, PR_SET_PDEATHSIG)")
