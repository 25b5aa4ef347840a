"""The ``oxbak`` command: parse arguments, make one library call, render the result.

This is the only module that prints (with its progress line, :mod:`oxbak._progress`), and
every line it writes to stderr goes through :func:`_say`. Errors are translated here,
once: an ``OxbakError`` becomes one ``oxbak: error: …`` line on stderr and its
``exit_code``; a traceback is shown only with ``--debug`` or ``OXBAK_DEBUG=1``.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click
import msgspec

from . import format as fmt
from ._version import __version__
from .errors import ArchiveError, OutputExistsError, OxbakError
from .paths import display

if TYPE_CHECKING:
    from ._progress import ProgressLine
    from .commit import Mode
    from .envelope import EnvelopeInfo
    from .manifest import Manifest
    from .owners import OwnerMode
    from .restore import EntryInfo
    from .toc import TocHeader

# Library functions are imported inside each command: `oxbak info` then loads the reader
# only, which keeps its start-up time small.

__all__ = ["main"]

EXIT_PARTIAL = 3
_json = msgspec.json.Encoder(order="deterministic")


def _debug() -> bool:
    return os.environ.get("OXBAK_DEBUG", "") not in ("", "0")


#: The progress line on the terminal while a command runs, if any (see :func:`_say`).
_line: ProgressLine | None = None


def _say(message: str) -> None:
    """Write *message* as a line on stderr: every message the command line writes.

    A progress line may be on the terminal: it is erased first and drawn again after, so
    a message always starts a line of its own, never glued onto the bar.
    """
    line = _line
    if line is None:
        click.echo(message, err=True)
        return
    with line.hidden():
        click.echo(message, err=True)


def _traceback_on_request() -> None:
    if _debug():
        import traceback  # only here: every command's start-up would pay for it

        _say(traceback.format_exc().rstrip("\n"))


def _fail(message: str, code: int = 1) -> NoReturn:
    _say(f"oxbak: error: {message}")
    sys.exit(code)


_ARCHIVE = "oxbak.archive"  # ctx.meta key: the archive the command reads


def _about_archive(exc: ArchiveError) -> str:
    """The message of *exc*, naming the archive the command reads.

    The library speaks of members and frames; the user needs the file too.
    """
    return _naming(click.get_current_context().meta.get(_ARCHIVE), str(exc))


def _naming(archive: str | None, message: str) -> str:
    """*message* about *archive*, starting with its name (once: an envelope's says it)."""
    where = "standard input" if archive == "-" else archive
    if not where or message.startswith((f"{where}: ", f"{where} ")):
        return message
    return f"{where}: {message}"


def _remember_archive(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """Note the ARCHIVE argument, so that an error about the archive can name it."""
    if value is not None:
        ctx.meta[_ARCHIVE] = value
    return value


_chain_bases = click.option(
    "--base",
    "bases",
    multiple=True,
    metavar="ARCHIVE",
    help="ARCHIVE is incremental: each archive of its chain before it, the full one first "
    "(repeatable, in order), for the files unchanged since.",
)


def _chain(bases: tuple[str, ...], archive: str) -> str | list[str]:
    """ARCHIVE, or its chain when --base names the archives before it."""
    if not bases:
        return archive
    if "-" in (*bases, archive):
        raise click.UsageError("standard input cannot be part of a chain")
    return [*bases, archive]


def _remember_archives(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """Note a lone ARCHIVE argument; a chain's errors name the archive they are about."""
    if len(value) == 1:
        ctx.meta[_ARCHIVE] = value[0]
    elif "-" in value:
        raise click.BadParameter(
            "standard input cannot be part of a chain: its archives are read at random",
            param=param,
        )
    return value


class _Group(click.Group):
    """Maps every failure to one line and an exit code (the error boundary)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OutputExistsError as exc:
            _fail(f"{exc} (use --force to replace it)", exc.exit_code)
        except ArchiveError as exc:
            _traceback_on_request()
            _fail(_about_archive(exc), exc.exit_code)
        except OxbakError as exc:
            _traceback_on_request()
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:
            # The library has removed its temp file or staging directory by now. Exit at
            # once: zstd's worker threads would otherwise finish their jobs first.
            _say("oxbak: error: interrupted")
            sys.stderr.flush()
            os._exit(143 if isinstance(exc, _Terminated) else 130)
        except BrokenPipeError:
            # The reader went away (e.g. `oxbak list x | head`): not our failure to report.
            sys.stderr.close()
            os._exit(141)
        except OSError as exc:
            _traceback_on_request()
            where = f": {exc.filename!r}" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}")
        except Exception as exc:  # a bug: still one line, the traceback on request
            _traceback_on_request()
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so temp files and staging directories are removed."""


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise _Terminated


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """The progress line on stderr, only when it is a terminal (and not *quiet*)."""
    global _line
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from ._progress import ProgressLine

    line = ProgressLine(label, sys.stderr)
    _line = line
    try:
        yield line.update
    finally:
        _line = None
        line.close()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return f"{n} B"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="oxbak")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Turn a state directory into one .oxbak file and back, safely.

    ARCHIVE is a file, '-' (standard input or output) or s3://BUCKET/KEY, an object in
    S3 or an S3-compatible service (credentials and region from the AWS environment).

    \b
    Example:
      oxbak pack state -o state.oxbak
      oxbak verify state.oxbak
      oxbak unpack state.oxbak restored
    """
    if debug:
        os.environ["OXBAK_DEBUG"] = "1"
    if threading_is_main():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _large_buffers_from_the_heap() -> None:
    """Have glibc serve the frames of a large archive (MiBs each) from its heap.

    By default a buffer that large is mapped fresh and unmapped when freed, so every
    decompressed frame costs a page fault per 4 KiB, in the kernel (benchmarks/NOTES.md
    has the figures). Process-wide, so the command line sets it, not the library;
    elsewhere than glibc nothing changes.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    mallopt(_M_TRIM_THRESHOLD, 128 << 20)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def _show_library_warnings(quiet: bool = False) -> None:
    """Route the library's ``oxbak`` logger to stderr as ``oxbak: warning: …`` lines.

    Notes (informational records) too, unless *quiet*.
    """
    import logging

    class StderrHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            level = "warning" if record.levelno >= logging.WARNING else "note"
            _say(f"oxbak: {level}: {record.getMessage()}")

    logger = logging.getLogger("oxbak")
    if not any(type(h).__name__ == "StderrHandler" for h in logger.handlers):
        logger.addHandler(StderrHandler())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def threading_is_main() -> bool:
    """Whether signal handlers can be installed (only from the main thread)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _parse_labels(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx=ctx, param=param)
        labels[key.strip()] = val
    return labels


def _read_exclude_from(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    from .patterns import read_patterns

    return tuple(p for path in values for p in read_patterns(path))


#: --exclude-from: patterns from files in .gitignore syntax, added to --exclude's.
_exclude_from = click.option(
    "--exclude-from",
    "excludes_from",
    multiple=True,
    metavar="FILE",
    callback=_read_exclude_from,
    help="Leave out what the patterns of FILE match (.gitignore syntax; repeatable).",
)


#: -j for the commands that read a whole archive (pack has its own).
_cores = click.option(
    "-j",
    "--threads",
    type=click.IntRange(0),
    default=0,
    help="Cores to use: worker processes read an archive file in parts, threads "
    "decompress (default 0: every CPU; 1: one process).",
)


#: -i for every command that reads an archive: the keys of an encrypted one.
_identity = click.option(
    "-i",
    "--identity",
    "identities",
    multiple=True,
    metavar="FILE",
    help="Decrypt an encrypted (age) archive with the key in FILE: age secret keys or an "
    "ssh private key (repeatable).",
)


#: -q for the commands that show progress or notes: errors and warnings only.
_quiet = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bar and no informational lines; warnings and errors still show.",
)


def _set_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        from .locations import set_s3_endpoint

        set_s3_endpoint(value)


#: --endpoint-url for every command that takes an archive: where s3:// URLs go.
_endpoint_url = click.option(
    "--endpoint-url",
    metavar="URL",
    expose_value=False,
    callback=_set_endpoint,
    help="S3-compatible service for s3:// URLs (default: AWS_ENDPOINT_URL, else AWS).",
)


def _parse_mode(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise click.BadParameter(f"{value!r} is not octal permission bits", ctx=ctx, param=param)
    return mode


@cli.command("pack")
@click.argument("src")
@click.option(
    "-o",
    "--output",
    "out",
    metavar="OUT|-",
    help="Archive to write ('-': stdout; s3://BUCKET/KEY: an object). "
    "Default: SRC-<UTC time>.oxbak here (.oxbak.age when encrypted).",
)
@click.option(
    "--level",
    type=click.IntRange(fmt.MIN_LEVEL, fmt.MAX_LEVEL),
    default=fmt.DEFAULT_LEVEL,
    show_default=True,
    help="zstd compression level.",
)
@click.option(
    "-j",
    "--threads",
    type=click.IntRange(0),
    default=0,
    help="Cores to use: worker processes pack the small files, threads compress the large "
    "ones (default 0: every CPU; 1: one process). The archive's bytes do not depend on it.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Leave out what matches (repeatable), as a .gitignore line would.",
)
@_exclude_from
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_labels,
    help="Store a label in the manifest (repeatable).",
)
@click.option(
    "--force", is_flag=True, help="Replace OUT if it exists (once the new archive is complete)."
)
@click.option(
    "--one-file-system",
    is_flag=True,
    help="Do not enter directories on other filesystems (mount points); keep them empty.",
)
@click.option(
    "--exclude-caches",
    is_flag=True,
    help="Leave out the contents of directories holding a CACHEDIR.TAG (but the tag).",
)
@click.option(
    "--no-xattrs",
    "no_xattrs",
    is_flag=True,
    help="Leave out extended attributes and ACLs (stored by default).",
)
@click.option(
    "--mode",
    "mode",
    default="0600",
    show_default=True,
    metavar="OCTAL",
    callback=_parse_mode,
    help="Permission bits of the archive file (not of a stream or an S3 object).",
)
@click.option(
    "-r",
    "--recipient",
    "recipients",
    multiple=True,
    metavar="KEY",
    help="Encrypt to this public key (age1…, 'ssh-ed25519 …', 'ssh-rsa …'); repeatable: "
    "any one of the keys opens the archive.",
)
@click.option(
    "-R",
    "--recipient-file",
    "recipient_files",
    multiple=True,
    metavar="FILE",
    help="Encrypt to the public keys in FILE, one a line, as `age -R` reads it (repeatable).",
)
@click.option(
    "--base",
    metavar="PREV",
    help="Pack incrementally: store only what changed since archive PREV (a file or any "
    "archive location; only its table of contents is read).",
)
@click.option(
    "--base-check",
    type=click.Choice(["metadata", "content"]),
    default="metadata",
    show_default=True,
    help="How --base tells unchanged files: by size, mode, times and inode, or by "
    "reading every file and comparing digests.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@_quiet
@_endpoint_url
def pack_cmd(
    src: str,
    out: str | None,
    level: int,
    threads: int,
    excludes: tuple[str, ...],
    excludes_from: tuple[str, ...],
    labels: dict[str, str],
    force: bool,
    one_file_system: bool,
    exclude_caches: bool,
    no_xattrs: bool,
    mode: int,
    recipients: tuple[str, ...],
    recipient_files: tuple[str, ...],
    base: str | None,
    base_check: Literal["metadata", "content"],
    as_json: bool,
    quiet: bool,
) -> None:
    """Pack directory SRC into one archive.

    With --base PREV the archive is incremental: it stores only the files that changed
    since PREV, and needs PREV (and PREV's own chain) to be restored.

    With --recipient or --recipient-file the archive is encrypted with age (the `age`
    tool decrypts it too), and is named SRC-<UTC time>.oxbak.age by default.

    Exit status 3 means the archive was written but some file changed while it was read,
    or some file or directory could not be read (see the warnings, and `oxbak verify`).

    \b
    Examples:
      oxbak pack /var/lib/oxios -o oxios.oxbak --label oxios_version=0.4.1
      oxbak pack /var/lib/oxios -r age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
      oxbak pack /var/lib/oxios -o s3://backups/oxios/2026-11-30.oxbak
      ssh host oxbak pack /var/lib/oxios -o - | oxbak unpack - restored
    """
    from .envelope import read_recipients_file
    from .writer import pack

    _show_library_warnings(quiet)
    to_stdout = out == "-"
    if to_stdout and as_json:
        raise click.UsageError("--json cannot be combined with -o - (stdout holds the archive)")
    if to_stdout and sys.stdout.isatty():
        raise click.UsageError(
            "refusing to write an archive to a terminal; redirect stdout or use -o FILE"
        )
    target = out  # "-" is standard output in the library too
    keys = list(recipients) + [k for path in recipient_files for k in read_recipients_file(path)]
    with _progress("packing", quiet) as progress:
        result = pack(
            src,
            target,
            level=level,
            threads=threads,
            excludes=excludes + excludes_from,
            labels=labels,
            force=force,
            mode=mode,
            one_file_system=one_file_system,
            exclude_caches=exclude_caches,
            xattrs=not no_xattrs,
            progress=progress,
            recipients=keys,
            base=base,
            base_check=base_check,
        )
    if to_stdout:
        sys.stdout.buffer.flush()
    m = result.manifest
    t = result.totals
    if as_json:
        click.echo(
            _json.encode(
                {
                    "output": result.output,
                    "entries": result.entries,
                    "bytes_in": result.bytes_in,
                    "bytes_out": result.bytes_out,
                    "seconds": round(result.seconds, 3),
                    "partial": result.partial,
                    "changed": result.changed,
                    "missing": result.missing,
                    "skipped": result.skipped,
                    **(
                        {}
                        if result.base_id is None
                        else {
                            "base": result.base_id,
                            "stored": result.stored,
                            "unchanged": result.unchanged,
                            "deleted": result.deleted,
                        }
                    ),
                    "totals": t,
                    "manifest": m,
                }
            )
        )
    elif not quiet:
        ratio = f"{result.bytes_in / result.bytes_out:.2f}x" if result.bytes_out else "n/a"
        out_part = f" -> {_size(result.bytes_out)}, ratio {ratio}" if result.bytes_out else ""
        _say(
            f"packed {result.entries:,} entries ({t.files:,} files, "
            f"{t.directories:,} dirs, {t.symlinks:,} symlinks, "
            f"{t.hardlinks:,} hardlinks), {_size(result.bytes_in)} in{out_part}, "
            f"{result.seconds:.2f} s -> {result.output}"
            + (f" ({result.excluded:,} excluded)" if result.excluded else "")
            + (
                f", incremental: {result.stored:,} stored, {result.unchanged:,} unchanged, "
                f"{result.deleted:,} deleted since base {result.base_id[:16]}"
                if result.base_id is not None
                else ""
            )
            + (
                f", encrypted to {len(keys)} recipient{'s' if len(keys) != 1 else ''}"
                if keys
                else ""
            )
        )
    if result.partial:
        _say(
            f"oxbak: warning: archive is PARTIAL: {len(result.changed)} file(s) changed and "
            f"{len(result.missing)} vanished or could not be read while packing"
        )
        sys.exit(EXIT_PARTIAL)


@cli.command("unpack")
@click.argument("archives", nargs=-1, metavar="ARCHIVE|-...", callback=_remember_archives)
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--replace", is_flag=True, help="Swap DEST's contents for the archive's, atomically.")
@click.option("--merge", is_flag=True, help="Overlay the archive onto DEST; other files stay.")
@click.option(
    "--same-owner",
    is_flag=True,
    help="Restore ownership, by user and group name (the default as root).",
)
@click.option(
    "--numeric-owner",
    is_flag=True,
    help="Restore ownership by the stored uid and gid, ignoring the names.",
)
@click.option(
    "--no-same-owner",
    is_flag=True,
    help="Do not restore ownership: everything belongs to the current user.",
)
@click.option(
    "--allow-external-symlinks",
    is_flag=True,
    help="Restore symlinks that point outside DEST, verbatim.",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="PATH",
    help="Restore only PATH (a directory: with everything under it); repeatable.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Leave out matching entries (repeatable), as `pack --exclude`.",
)
@_exclude_from
@click.option(
    "--no-xattrs",
    "no_xattrs",
    is_flag=True,
    help="Do not restore extended attributes and ACLs (restored by default where DEST's "
    "filesystem takes them).",
)
@_cores
@_identity
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@_quiet
@_endpoint_url
def unpack_cmd(
    archives: tuple[str, ...],
    dest: str,
    replace: bool,
    merge: bool,
    same_owner: bool,
    numeric_owner: bool,
    no_same_owner: bool,
    allow_external_symlinks: bool,
    only: tuple[str, ...],
    excludes: tuple[str, ...],
    excludes_from: tuple[str, ...],
    no_xattrs: bool,
    threads: int,
    identities: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Restore ARCHIVE ('-': stdin) into DEST, verified before anything is committed.

    By default DEST must not exist or be empty. Nothing in DEST changes unless the whole
    archive is intact and safe.

    An incremental archive is restored with its chain: the full archive first, then each
    incremental in the order they were packed (each the --base of the next). The chain
    is checked before anything is written; each file is read from the archive that
    stores it.

    With --only, just those paths are restored (with the directories leading to them),
    staged, verified and committed the same way; from a file only the parts of the
    archive that hold them are read.

    \b
    Examples:
      oxbak unpack state.oxbak restored
      oxbak unpack full.oxbak 01.oxbak 02.oxbak restored
      oxbak unpack s3://backups/oxios/2026-11-30.oxbak restored
      oxbak unpack state.oxbak /var/lib/oxios --replace
      oxbak unpack state.oxbak restored --only memory/facts --exclude '*.tmp'
      oxbak unpack state.oxbak.age restored --identity key.txt
    """
    from .restore import unpack

    if not archives:  # one argument: click gave it to DEST
        raise click.UsageError("Missing argument 'DEST'.")
    _show_library_warnings(quiet)
    _large_buffers_from_the_heap()
    if replace and merge:
        raise click.UsageError("--replace and --merge cannot be combined")
    mode: Mode = "replace" if replace else "merge" if merge else "new"
    if no_same_owner and (same_owner or numeric_owner):
        raise click.UsageError("--no-same-owner cannot be combined with --same-owner or "
                               "--numeric-owner")
    owner: OwnerMode = "none" if no_same_owner else "numeric" if numeric_owner else "name"
    started = time.monotonic()
    with _progress("unpacking", quiet) as progress:
        result = unpack(
            list(archives),
            dest,
            mode=mode,
            owner=owner,
            allow_external_symlinks=allow_external_symlinks,
            only=only,
            excludes=excludes + excludes_from,
            threads=threads,
            xattrs=not no_xattrs,
            progress=progress,
            identities=identities,
        )
    seconds = time.monotonic() - started
    if as_json:
        click.echo(
            _json.encode(
                {
                    "dest": result.dest,
                    "entries": result.entries,
                    "bytes": result.bytes,
                    "seconds": round(seconds, 3),
                    "partial": result.partial,
                    "changed": result.changed,
                    "missing": result.missing,
                }
            )
        )
    elif not quiet:
        chain = f" from a chain of {len(archives)} archives" if len(archives) > 1 else ""
        _say(
            f"restored {result.entries:,} entries ({_size(result.bytes)}){chain} "
            f"into {result.dest} in {seconds:.2f} s"
        )
    if result.partial:
        _say(
            f"oxbak: warning: the archive is PARTIAL: {len(result.changed)} file(s) changed "
            f"and {len(result.missing)} vanished or could not be read while it was packed: "
            + ", ".join(result.changed + result.missing)[:500]
        )


def _render_manifest(m: Manifest, toc: TocHeader | None) -> str:
    totals = toc.totals if toc is not None else m.totals
    if toc is not None:
        partial = (
            f"YES: {toc.changed} file(s) changed and {toc.missing} vanished or could not be read "
            f"(`oxbak verify` lists them)"
            if toc.partial
            else "no"
        )
    elif m.version >= fmt.FIRST_SEEKABLE_VERSION or m.partial is None:
        partial = "unknown until verified (read as a stream; the counts are the scan's)"
    else:
        partial = "no"
        if m.partial:
            partial = f"YES (run `oxbak verify` for the list), {m.changed} file(s)"
    lines = [
        f"format:        {m.format} version {m.version}",
        f"created:       {m.created_at}",
        *_incremental_lines(m, toc),
        f"oxbak:         {m.oxbak_version}",
        f"source:        {m.source}",
        f"entries:       {totals.entries:,} ({totals.files:,} files, "
        f"{totals.directories:,} dirs, "
        f"{totals.symlinks:,} symlinks, {totals.hardlinks:,} hardlinks)",
        f"bytes:         {totals.bytes:,}",
        f"compression:   {m.compression.algorithm} level {m.compression.level}",
        f"partial:       {partial}",
        f"skipped:       {m.skipped} special file(s)",
    ]
    if m.labels:
        lines.append("labels:")
        lines += [f"  {k}={v}" for k, v in m.labels.items()]
    lines.append(f"sections:      {len(m.sections)}")
    lines += [f"  {s.name}: {s.entry_count:,}" for s in m.sections]
    return "\n".join(lines)


def _incremental_lines(m: Manifest, toc: TocHeader | None) -> list[str]:
    """What ``info`` says of an incremental's base; nothing for a full archive."""
    from .manifest import IncrementalManifest  # loaded already: the manifest is one
    from .toc import IncrementalTocHeader

    if not isinstance(m, IncrementalManifest):
        return []
    lines = [
        f"base:          {m.base.id}",
        f"               created {m.base.created_at}; {m.base.deleted:,} of its entries "
        f"deleted since",
    ]
    if isinstance(toc, IncrementalTocHeader):
        lines.append(
            f"incremental:   {toc.stored:,} entries stored here, {toc.unchanged:,} files "
            f"unchanged (their content is in the base's chain)"
        )
    else:  # read as a stream: the counts are in the TOC, at the end
        lines.append("incremental:   restoring it needs its base's chain")
    return lines


@cli.command("info")
@click.argument("archive", metavar="ARCHIVE|-", callback=_remember_archive)
@_identity
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and status as JSON.")
@_endpoint_url
def info_cmd(archive: str, identities: tuple[str, ...], as_json: bool) -> None:
    """Show what ARCHIVE holds. Reads only its first frame and its table of contents' header.

    From a file the status is final (exact totals, partial or not); from a pipe it is what
    the manifest says, the counts of the scan.

    \b
    Example:
      oxbak info state.oxbak --json
    """
    from .errors import IdentityError
    from .source import read_info
    from .toc import IncrementalTocHeader

    try:
        info = read_info(archive, identities=identities)
    except IdentityError as exc:
        if identities or exc.envelope is None:
            raise
        # Without a key: that it is encrypted, and to what kinds of keys; nothing more.
        if as_json:
            sealed = {"encrypted": True, "envelope": _envelope_doc(exc.envelope)}
            click.echo(_json.encode(sealed).decode())
        else:
            click.echo(
                f"encrypted:     {exc.envelope.describe()}\n"
                f"               (the rest needs the key: --identity FILE)"
            )
        return
    if as_json:
        # The manifest's fields, with the final status where the TOC gives it: the same
        # keys as version 1's manifest, which was rewritten with it at the end of a pack.
        doc: dict[str, Any] = msgspec.to_builtins(info.manifest)
        if info.toc is not None:
            toc = info.toc
            doc["totals"] = msgspec.to_builtins(toc.totals)
            doc["partial"] = toc.partial
            doc["changed"] = toc.changed + toc.missing
            doc["status"] = {"changed": toc.changed, "missing": toc.missing}
            if isinstance(toc, IncrementalTocHeader):
                # The manifest's `base` is there already; these are final only in the TOC.
                doc["stored"] = toc.stored
                doc["unchanged"] = toc.unchanged
        if info.envelope is not None:
            doc["encrypted"] = True
            doc["envelope"] = _envelope_doc(info.envelope)
        click.echo(_json.encode(doc).decode())
    else:
        if info.envelope is not None:
            click.echo(f"encrypted:     {info.envelope.describe()}")
        click.echo(_render_manifest(info.manifest, info.toc))


def _envelope_doc(envelope: EnvelopeInfo) -> dict[str, Any]:
    return {"format": "age", "armored": envelope.armored, "recipients": list(envelope.stanzas)}


def _mode_string(kind: str, mode: int) -> str:
    first = {"dir": "d", "symlink": "l", "hardlink": "h"}.get(kind, "-")
    bits = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return first + bits


def _human(n: int) -> str:
    """Sizes as ``ls -h`` shows them: 1024-based, one decimal below 10."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            if not unit:
                return str(n)
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    return str(n)


def _text(data: bytes) -> str:
    return os.fsdecode(data) if _utf8(data) else data.decode("utf-8", "backslashreplace")


@cli.command("list", context_settings={"help_option_names": ["--help"]})
@click.argument("archive", metavar="ARCHIVE|-", required=False, callback=_remember_archive)
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@_chain_bases
@_identity
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry (JSON Lines).")
@click.option(
    "-h", "--human-readable", "human", is_flag=True, help="Sizes in K, M, G (alone: this help)."
)
@_endpoint_url
@click.pass_context
def list_cmd(
    ctx: click.Context,
    archive: str | None,
    paths: tuple[str, ...],
    bases: tuple[str, ...],
    identities: tuple[str, ...],
    as_json: bool,
    human: bool,
) -> None:
    """List the entries of ARCHIVE: type, mode, owner, size, mtime, path.

    From a file only the table of contents is read. PATH limits the listing to those
    entries (a directory: its subtree).

    An incremental archive lists its whole tree, with a column naming where each entry's
    content is: '.' in ARCHIVE itself, 'base' in its chain, or with --base the archive of
    the chain that stores it (the chain is checked first).

    \b
    Examples:
      oxbak list state.oxbak memory/facts
      oxbak list state.oxbak --json | jq -r 'select(.size > 1000000) | .path'
      oxbak list 02.oxbak --base full.oxbak --base 01.oxbak
    """
    if archive is None:
        if human:  # `oxbak list -h` asks for help, as `-h` does for every other command
            click.echo(ctx.get_help())
            return
        raise click.UsageError("Missing argument 'ARCHIVE|-'.", ctx)
    from .restore import list_entries

    entries = list_entries(_chain(bases, archive), paths, identities=identities)
    if as_json:
        _list_json(entries)
    else:
        _list_text(entries, human, bool(bases) or _is_incremental(archive, identities))


def _is_incremental(archive: str, identities: tuple[str, ...]) -> bool:
    """Whether ARCHIVE is incremental (its listing then says where each entry is)."""
    from .reader import read_manifest

    if archive == "-":
        return False  # a pipe is read once; an incremental cannot be listed from one
    return read_manifest(archive, identities=identities).version >= fmt.INCREMENTAL_VERSION


def _list_json(entries: Iterator[EntryInfo]) -> None:
    write = sys.stdout.write
    for e in entries:
        row: dict[str, Any] = {
            "path": _json_name(e.path) if e.path else ".",
            "type": e.type,
            "mode": f"{e.mode:04o}",
            "size": e.size,
            "mtime_ns": e.mtime_ns,
            "uid": e.uid,
            "gid": e.gid,
        }
        if e.user or e.group:
            row["user"], row["group"] = e.user, e.group
        if e.digest:
            row["digest"] = e.digest.hex()
        if e.ino:
            row["ctime_ns"], row["ino"] = e.ctime_ns, e.ino
        if e.archive:
            row["archive"] = e.archive
        if not _utf8(e.path):
            row["path_b64"] = base64.b64encode(e.path).decode()
        if e.type in ("symlink", "hardlink"):
            row["target"] = _json_name(e.target)
            if not _utf8(e.target):
                row["target_b64"] = base64.b64encode(e.target).decode()
        write(_json.encode(row).decode() + "\n")


def _json_name(name: bytes) -> str:
    """A name for JSON: itself when it is UTF-8 (JSON escapes what needs it).

    Otherwise it is shown with ``\\xNN`` for the bytes that are not UTF-8, and the
    ``*_b64`` field beside it carries the bytes losslessly.
    """
    return name.decode("utf-8") if _utf8(name) else display(name)


def _list_text(entries: Iterator[EntryInfo], human: bool, where: bool = False) -> None:
    """``ls -l``-like lines, written in batches (60k lines one write() each is slow).

    With *where* (an incremental), a column before the path says which archive holds the
    entry's content: ``.`` the one listed.
    """
    modes: dict[tuple[str, int], str] = {}
    owners: dict[tuple[str, int, str, int], str] = {}
    lines: list[str] = []
    write = sys.stdout.write
    strftime, gmtime = time.strftime, time.gmtime
    for e in entries:
        kind = e.type
        mode = modes.get((kind, e.mode))
        if mode is None:
            mode = modes[kind, e.mode] = _mode_string(kind, e.mode)
        key = (e.user, e.uid, e.group, e.gid)
        owner = owners.get(key)
        if owner is None:
            owner = owners[key] = f"{e.user or e.uid}/{e.group or e.gid}"
        size = _human(e.size) if human else e.size
        stamp = strftime("%Y-%m-%d %H:%M:%SZ", gmtime(e.mtime_ns // 1_000_000_000))
        path = display(e.path) if e.path else "."
        if kind == "symlink" or kind == "hardlink":
            path += " -> " + display(e.target)
        if where:
            path = f"{e.archive or '.':<8} {path}"
        lines.append(f"{mode} {owner:<12} {size:>12} {stamp} {path}\n")
        if len(lines) >= 1024:
            write("".join(lines))
            lines.clear()
    write("".join(lines))


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@cli.command("cat")
@click.argument("archive", metavar="ARCHIVE|-", callback=_remember_archive)
@click.argument("path")
@_chain_bases
@_identity
@_endpoint_url
def cat_cmd(
    archive: str, path: str, bases: tuple[str, ...], identities: tuple[str, ...]
) -> None:
    """Write the content of the file PATH in ARCHIVE to stdout.

    From a file only the frames holding PATH are read. The content's digest is checked
    before its last bytes are written; on a mismatch the output stops short and the exit
    status is 1.

    Of an incremental ARCHIVE, a file unchanged since its base is read from the archive
    of its chain that stores it: give them with --base.

    \b
    Examples:
      oxbak cat state.oxbak memory/facts/000001.json | jq .
      oxbak cat 02.oxbak seeds/000001.json --base full.oxbak --base 01.oxbak
    """
    from .restore import cat

    chain = _chain(bases, archive)
    _large_buffers_from_the_heap()
    cat(chain, path, sys.stdout.buffer, identities=identities)
    sys.stdout.buffer.flush()


@cli.command("diff")
@click.argument("archives", nargs=-1, metavar="ARCHIVE|-...", callback=_remember_archives)
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@click.option(
    "--content",
    is_flag=True,
    help="Also read and hash every file in DIR and compare it with the archive's digest.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Leave out matching paths on both sides (repeatable), as `pack --exclude`.",
)
@_identity
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change (JSON Lines).")
@_endpoint_url
def diff_cmd(
    archives: tuple[str, ...],
    directory: str,
    content: bool,
    excludes: tuple[str, ...],
    identities: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show what differs between ARCHIVE ('-': stdin) and the directory DIR.

    One line per difference, in the archive's order: '+ PATH' is only in DIR, '- PATH'
    only in ARCHIVE, 'M PATH (…)' in both, with what differs: type, mode, size, mtime,
    target (of a link), content. Ownership is not compared. Without --content, files are
    compared by their metadata alone and not read; with it, every file in DIR is hashed,
    which finds changed bytes under an unchanged size and mtime. From a file only the
    archive's table of contents is read; a pipe or a version-1 archive is read and checked
    whole before the changes are shown.

    An incremental archive is compared as the whole tree it describes; given with its
    chain (the full archive first), the chain is checked too.

    Exit status: 0 if they are the same, 1 if they differ, 2 on trouble (as diff(1)).

    \b
    Examples:
      oxbak diff state.oxbak /var/lib/oxios
      oxbak diff full.oxbak 01.oxbak 02.oxbak /var/lib/oxios
      oxbak diff state.oxbak /var/lib/oxios --content --json | jq -r .path
    """
    from .compare import Change, Stat, diff

    if not archives:  # one argument: click gave it to DIR
        raise click.UsageError("Missing argument 'DIR'.")

    def facts(s: Stat) -> dict[str, Any]:
        if s.type == "hardlink":
            return {"type": s.type, "target": _text(s.target)}
        row: dict[str, Any] = {"type": s.type, "mode": f"{s.mode:04o}", "mtime_ns": s.mtime_ns}
        if s.type == "file":
            row["size"] = s.size
        elif s.type == "symlink":
            row["target"] = _text(s.target)
        return row

    def detail(field: str, a: Stat, d: Stat) -> str:
        if field == "mode":
            return f"mode {a.mode:04o} -> {d.mode:04o}"
        if field == "target":
            return f"target {_text(a.target)} -> {_text(d.target)}"
        if field in ("type", "size"):
            return f"{field} {getattr(a, field)} -> {getattr(d, field)}"
        return field  # mtime, content: --json has the times

    def line(c: Change) -> str:
        a, d = c.archive, c.disk
        what = [detail(f, a, d) for f in c.fields] if a is not None and d is not None else []
        if c.missing:
            what.append("vanished or could not be read when the archive was packed")
        mark = {"added": "+", "removed": "-", "modified": "M"}[c.status]
        return f"{mark} {c.name}" + (f" ({', '.join(what)})" if what else "") + "\n"

    write = sys.stdout.write
    differ = False
    try:
        for change in diff(
            list(archives), directory, content=content, excludes=excludes, identities=identities
        ):
            differ = True
            if as_json:
                row: dict[str, Any] = {
                    "status": change.status,
                    "path": change.name,
                    "type": change.type,
                }
                if change.fields:
                    row["fields"] = change.fields
                if change.archive is not None:
                    row["archive"] = facts(change.archive)
                if change.disk is not None:
                    row["disk"] = facts(change.disk)
                if change.missing:
                    row["missing"] = True
                write(_json.encode(row).decode() + "\n")
            else:
                write(line(change))
    except BrokenPipeError:
        raise
    except (OxbakError, OSError) as exc:  # 1 means "they differ": trouble is 2, as diff(1)
        _traceback_on_request()
        if isinstance(exc, ArchiveError):
            _fail(_about_archive(exc), 2)
        _fail(str(exc) if isinstance(exc, OxbakError) else f"{exc.strerror or exc}", 2)
    if differ:
        sys.exit(1)


@cli.command("verify")
@click.argument(
    "archives", nargs=-1, required=True, metavar="ARCHIVE|-...", callback=_remember_archives
)
@_cores
@_identity
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_quiet
@_endpoint_url
def verify_cmd(
    archives: tuple[str, ...],
    threads: int,
    identities: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Check ARCHIVE completely without writing anything.

    Exit status 0 if intact, 1 if not, 3 if intact but partial (some file could not be
    captured when it was packed; the warning names them).

    An incremental archive alone is checked for what it stores, and that its records of
    files unchanged since its base are consistent; their content is in its base. Given
    with its chain (the full archive first, then each incremental in order), the whole
    chain is checked: every archive, and every link between them.

    \b
    Examples:
      oxbak verify state.oxbak && echo intact
      oxbak verify full.oxbak 01.oxbak 02.oxbak
    """
    from .restore import verify

    _show_library_warnings(quiet)
    _large_buffers_from_the_heap()
    archive = archives[-1]
    with _progress("verifying", quiet) as progress:
        report = verify(
            list(archives), progress=progress, threads=threads, identities=identities
        )
    if as_json:
        click.echo(
            _json.encode(
                {
                    "ok": report.ok,
                    "problems": report.problems,
                    "entries": report.entries,
                    "bytes": report.bytes,
                    "partial": report.partial,
                    "changed": report.changed,
                    "missing": report.missing,
                    **(
                        {}
                        if report.base is None
                        else {"base": report.base, "unchanged": report.unchanged}
                    ),
                    **({"archives": report.archives} if report.archives > 1 else {}),
                }
            )
        )
    elif report.ok:
        if quiet:
            pass
        elif report.archives > 1:
            _say(
                f"ok: chain of {report.archives} archives, every one intact and each based "
                f"on the one before; its last tree: {report.entries:,} entries, "
                f"{_size(report.bytes)}, every digest matches"
            )
        elif report.base is None:
            _say(f"ok: {report.entries:,} entries, {_size(report.bytes)}, every digest matches")
        else:
            # Alone, an incremental holds only what changed: say what was not checked.
            _say(
                f"ok: incremental archive of {report.entries:,} entries, "
                f"{_size(report.bytes)}, every stored digest matches; "
                f"{report.unchanged:,} unchanged files are the content of base "
                f"{report.base}, checked only with its chain"
            )
        if report.partial:
            _say(
                f"oxbak: warning: the archive is PARTIAL: changed while packed: "
                f"{', '.join(report.changed) or '-'}; vanished or unreadable: "
                f"{', '.join(report.missing) or '-'}"
            )
    elif report.manifest is None:
        # Not even a manifest: the one error every command gives (random bytes, a plain
        # .tar.zst, damage at the very start, an envelope it cannot open); or, for a
        # chain, the archive that does not fit (named).
        where = archive if len(archives) == 1 else None
        _say(f"oxbak: error: {_naming(where, report.problems[0])}")
    else:
        for problem in report.problems:
            _say(f"oxbak: problem: {problem}")
        what = archive if len(archives) == 1 else f"the chain {' '.join(archives)}"
        _say(f"oxbak: error: {what} is damaged: {len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(1)
    if report.partial:
        sys.exit(EXIT_PARTIAL)  # intact, but some file was not captured: as pack said


@cli.command("recover")
@click.argument("dest", type=click.Path(path_type=str))
@_quiet
def recover_cmd(dest: str, quiet: bool) -> None:
    """Clean up after an unpack into DEST that was killed.

    Removes abandoned staging directories; puts DEST's old tree back if a killed swap left
    it aside. `oxbak unpack` does this by itself first; this command is for doing it now.

    \b
    Example:
      oxbak recover /var/lib/oxios
    """
    from .commit import recover

    actions = recover(dest)
    if quiet:
        return
    for action in actions:
        _say(action)
    if not actions:
        _say("nothing to recover")


def _parse_age(ctx: click.Context, param: click.Parameter, value: str) -> str:
    import re

    if re.fullmatch(r"\d+[smhd]?", value.strip()) is None:
        raise click.BadParameter(f"{value!r} is not an age such as 90s, 30m, 12h or 2d")
    return value.strip()


def _seconds(age: str) -> int:
    unit = age[-1] if age[-1] in "smhd" else "s"
    return int(age.rstrip("smhd")) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


@cli.command("abort-uploads")
@click.argument("url", metavar="s3://BUCKET[/PREFIX]")
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    default="0",
    callback=_parse_age,
    help="Only uploads started at least AGE ago (90s, 30m, 12h, 2d); default: all.",
)
@click.option("-n", "--dry-run", is_flag=True, help="List them; abort nothing.")
@_endpoint_url
@_quiet
@click.pass_context
def abort_uploads_cmd(
    ctx: click.Context, url: str, older_than: str, dry_run: bool, quiet: bool
) -> None:
    """Remove the incomplete uploads of packs to S3 that were killed.

    A pack to s3://BUCKET/KEY uploads its archive in parts; the object appears only once
    the last part is in. A pack that fails or is interrupted aborts its upload, but one
    killed outright (kill -9, a lost machine) leaves the parts stored, and billed, with no
    object. This aborts every incomplete upload whose key starts with PREFIX, printing one
    line for each. An upload still being written is aborted too (that pack then fails,
    leaving no object): --older-than spares recent ones. A bucket lifecycle rule with
    AbortIncompleteMultipartUpload does the same on a schedule (see the README).

    \b
    Examples:
      oxbak abort-uploads s3://backups/oxios/ --dry-run
      oxbak abort-uploads s3://backups --older-than 1d
    """
    from .errors import InputError
    from .locations import is_s3_url

    if not is_s3_url(url):
        raise click.UsageError(f"{url!r} is not an s3:// URL", ctx)
    try:
        from ._s3 import abort_uploads  # boto3: this command is for S3 alone
    except ImportError as exc:
        raise InputError("s3:// URLs need boto3: pip install 'oxbak[s3]'") from exc

    age = _seconds(older_than)
    found = abort_uploads(url, older_than=age, dry_run=dry_run)
    verb = "would abort" if dry_run else "aborted"
    for upload in found:
        started = (
            upload.initiated.strftime("%Y-%m-%d %H:%M:%SZ") if upload.initiated else "unknown"
        )
        parts = f"{upload.parts:,} part{'s' if upload.parts != 1 else ''}"
        click.echo(f"{verb} {upload.url} (started {started}, {parts}, {upload.bytes:,} bytes)")
    if not found and not quiet:
        ago = f" started {older_than} ago or more" if age else ""
        _say(f"no incomplete uploads under {url}{ago}")


def _debug_anywhere(args: list[str]) -> list[str]:
    """Take ``--debug`` anywhere on the line, as users add it when a command fails.

    ``oxbak unpack a.oxbak d --debug`` too; not after ``--``, where it is a file's name.
    """
    end = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:end]:
        os.environ["OXBAK_DEBUG"] = "1"
        args = [a for a in args[:end] if a != "--debug"] + args[end:]
    return args


def main() -> NoReturn:
    """Entry point of the ``oxbak`` console script."""
    # One command per process: reference counting frees what it drops, and the cyclic
    # collector's passes over a large tree's entries cost ~6% of a 250k-file pack.
    gc.disable()
    try:
        try:
            args = _debug_anywhere(sys.argv[1:])
            code = cli.main(args=args, prog_name="oxbak", standalone_mode=False)
        except click.exceptions.NoArgsIsHelpError as exc:
            # `oxbak` alone: a short usage, not the whole help reported as an error.
            where = exc.ctx.command_path if exc.ctx is not None else "oxbak"
            _say(
                f"usage: {where} COMMAND [ARGS]...  (commands: {', '.join(cli.commands)}; "
                f"'{where} --help' for more)"
            )
            _exit(exc.exit_code)
        except click.UsageError as exc:
            # One line, like every other error; the command's --help has the details.
            where = exc.ctx.command_path if exc.ctx is not None else "oxbak"
            _fail(f"{exc.format_message()} (see '{where} --help')", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("interrupted", 130)
        status = code if isinstance(code, int) else 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            _say(str(exc.code))
            status = 1
    _exit(status)


def _exit(status: int) -> NoReturn:
    """Flush what the command printed and end the process at once.

    The interpreter's own shutdown (collecting every module) takes ~8 ms and has nothing
    left to do: the command has closed, flushed and synced its files, and the only threads
    still running are daemons.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = 141  # the reader went away, as in _Group.invoke
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)
