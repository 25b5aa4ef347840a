"""Run a command and write its exit status and peak RSS to a file: ``launch.py OUT CMD…``.

``ru_maxrss`` of a process keeps the high-water mark of the memory image it was forked
from: a child forked straight from pytest (hundreds of MB after building the corpus)
would report pytest's size, not its own. This launcher is started with ``python -I -S``
(a few MB), and the command it spawns inherits only that, so the figure it writes is the
command's own peak. Resource limits set on the launcher (``RLIMIT_AS``) pass to the
command. OUT gets one line: ``<exit code> <peak RSS in KiB>``; the launcher exits with the
command's code (128 + N if signal N killed it).
"""

import os
import sys


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = code if code >= 0 else 128 - code
    with open(out, "w") as fh:
        fh.write(f"{code} {usage.ru_maxrss}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
