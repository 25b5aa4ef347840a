"""The age envelope: an archive encrypted to age recipients, read back with identities.

An encrypted archive is a standard age file (``age-encryption.org/v1``) whose plaintext
is a complete archive; the ``age`` tool decrypts it and oxbak reads what ``age``
encrypts. This module owns everything about the envelope, so that it wraps whatever
byte stream a location gives (a file, a pipe, any other location) without knowing it:

- :func:`open_archive` opens an archive for reading, looks at its first bytes before
  any zstd parsing, and when they are an age header (binary, or the ASCII armor) hands
  out the plaintext instead, decrypted as it is read;
- :func:`encrypting` wraps a sink's byte stream: what is written to it reaches the sink
  encrypted;
- :func:`parse_recipients` and :func:`load_identities` turn public keys and identity
  files into pyrage's objects, with one line naming what is wrong.

Encryption and decryption run in pyrage (bindings to rage, the Rust age implementation)
through ``encrypt_io``/``decrypt_io``, in a thread that exchanges bounded pieces with the
caller: memory stays a few MiB whatever the archive's size, and no plaintext is written
anywhere but where the caller puts it (unpack: its staging directory). pyrage reports a
bad header as ``DecryptError`` but a payload cut short or changed as ``OSError``; both are
translated here, once, into :class:`~oxbak.errors.IdentityError` (no key, no matching
key) or :class:`~oxbak.errors.EnvelopeError` (damaged). Plaintext handed out before a
damaged chunk was authenticated chunk by chunk (age's STREAM), so it is what was packed;
the reader simply meets the error where the damage is.

pyrage is imported only where a key is parsed or data is encrypted or decrypted:
reading an unencrypted archive never loads it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    EnvelopeError,
    IdentityError,
    InputError,
    OutputError,
    OxbakError,
    RecipientError,
)
from .locations import Archive, Input, Readable, open_input

if TYPE_CHECKING:
    from pyrage import ssh, x25519

    Recipient = x25519.Recipient | ssh.Recipient
    Identity = x25519.Identity | ssh.Identity

__all__ = [
    "AGE_MAGIC",
    "ARMOR_BEGIN",
    "Decrypted",
    "Encrypting",
    "EnvelopeInfo",
    "IdentityFile",
    "encrypting",
    "load_identities",
    "open_archive",
    "parse_recipients",
    "read_header",
    "read_recipients_file",
    "sniff",
]

#: The first line of every binary age file.
AGE_MAGIC = b"age-encryption.org/v1\n"
#: The first line of an ASCII-armored age file.
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_SNIFF = max(len(AGE_MAGIC), len(ARMOR_BEGIN))
#: The most header bytes read to find its end (a header names every recipient: ~200
#: bytes for an X25519 one, ~500 for ssh-rsa 4096); beyond, it is refused, not buffered.
MAX_HEADER = 1 << 20
#: The most bytes an identity or recipients file may have.
MAX_KEY_FILE = 1 << 20
#: Plaintext is handed between the threads in pieces of this size, at most _DEPTH waiting.
_PIECE = 1 << 20
_DEPTH = 4
_POLL = 0.1

#: An identity file: age secret keys (``AGE-SECRET-KEY-1…``, one a line, ``#`` comments)
#: or an unencrypted OpenSSH private key (ed25519 or RSA), as ``age -i`` takes.
IdentityFile = str | os.PathLike[str]


@dataclass(frozen=True)
class EnvelopeInfo:
    """What an age header says without a key: its form and its recipients' stanza types.

    ``stanzas`` lists one type per recipient, in header order (``X25519``,
    ``ssh-ed25519``, ``ssh-rsa``, ``scrypt`` for a passphrase, or a plugin's name); the
    random "grease" stanzas rage adds are left out. Without the key nothing in the header
    is authenticated: the types are what it claims.
    """

    armored: bool
    stanzas: tuple[str, ...]

    def describe(self) -> str:
        """``age (armored), 2 recipients: X25519, ssh-ed25519``."""
        form = "age (armored)" if self.armored else "age"
        count = len(self.stanzas)
        return f"{form}, {count} recipient{'s' if count != 1 else ''}: " + ", ".join(
            self.stanzas
        )


# --------------------------------------------------------------------------- keys


def parse_recipients(values: Sequence[str]) -> list[Recipient]:
    """Pyrage recipients for public keys: ``age1…``, ``ssh-ed25519 …``, ``ssh-rsa …``.

    :raises RecipientError: one of them is not a public key oxbak can encrypt to.
    """
    import pyrage

    if isinstance(values, str):  # one key, not a sequence of one-letter keys
        values = [values]
    out: list[Recipient] = []
    for value in values:
        text = value.strip()
        try:
            if text.startswith("age1"):
                out.append(pyrage.x25519.Recipient.from_str(text))
            elif text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
                out.append(pyrage.ssh.Recipient.from_str(text))
            else:
                raise RecipientError(_not_a_recipient(text))
        except pyrage.RecipientError as exc:
            hint = ""
            if text.startswith("age1") and "1" in text[4:] and not text.startswith("age1q"):
                hint = " (plugin recipients are not supported)"
            raise RecipientError(
                f"recipient {_short(text)!r} is not valid: {_one_line(exc)}{hint}"
            ) from None
    if not out:
        raise RecipientError("no recipient to encrypt to")
    return out


def _not_a_recipient(text: str) -> str:
    if text.startswith("AGE-SECRET-KEY-") or "PRIVATE KEY" in text:
        return "a recipient must be a public key, not a secret key"
    return (
        f"recipient {_short(text)!r} is not an age public key (age1…) "
        f"or an ssh-ed25519 / ssh-rsa public key"
    )


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _read_key_file(path: IdentityFile, what: str) -> bytes:
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise (IdentityError if what == "identity" else RecipientError)(
            f"cannot read {what} file {name!r}: {exc.strerror or exc}"
        ) from exc
    if len(data) > MAX_KEY_FILE:
        raise (IdentityError if what == "identity" else RecipientError)(
            f"{what} file {name!r} is larger than {MAX_KEY_FILE} bytes"
        )
    return data


def read_recipients_file(path: IdentityFile) -> list[str]:
    """The recipients of a file as ``age -R`` reads it: one a line, ``#`` comments.

    :raises RecipientError: the file cannot be read or holds no recipient.
    """
    data = _read_key_file(path, "recipients")
    lines = [
        line.strip()
        for line in data.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise RecipientError(f"recipients file {os.fspath(path)!r} holds no recipient")
    return lines


def load_identities(paths: Sequence[IdentityFile]) -> list[Identity]:
    """Pyrage identities from identity files (see :data:`IdentityFile`).

    :raises IdentityError: a file cannot be read or is not an identity file.
    """
    import pyrage

    if isinstance(paths, (str, os.PathLike)):  # one file, not a sequence of letters
        paths = [paths]
    out: list[Identity] = []
    for path in paths:
        name = os.fspath(path)
        data = _read_key_file(path, "identity")
        if b"PRIVATE KEY-----" in data:
            try:
                out.append(pyrage.ssh.Identity.from_buffer(data))
            except pyrage.IdentityError as exc:
                why = _one_line(exc)
                if "decrypted first" in why:
                    why = "it is protected by a passphrase (use a copy without one)"
                raise IdentityError(f"cannot use ssh key {name!r}: {why}") from None
            continue
        if data.startswith((AGE_MAGIC, ARMOR_BEGIN)):
            raise IdentityError(
                f"identity file {name!r} is itself encrypted; decrypt it first "
                f"(age -d) and give the result"
            )
        found = 0
        for number, raw in enumerate(data.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            if line.startswith(b"AGE-PLUGIN-"):
                raise IdentityError(
                    f"identity file {name!r}, line {number}: plugin identities are not supported"
                )
            try:
                out.append(pyrage.x25519.Identity.from_str(line.decode("ascii")))
            except (pyrage.IdentityError, UnicodeDecodeError):
                raise IdentityError(
                    f"identity file {name!r}, line {number}: not an age secret key "
                    f"(AGE-SECRET-KEY-1…), and the file is not an ssh private key"
                ) from None
            found += 1
        if not found:
            raise IdentityError(f"identity file {name!r} holds no identity")
    return out


# --------------------------------------------------------------------------- the header


def sniff(head: bytes) -> bool | None:
    """None when *head* (an input's first bytes) is not age; else whether it is armored."""
    if head.startswith(AGE_MAGIC):
        return False
    if head.startswith(ARMOR_BEGIN):
        return True
    return None


def _header_end(data: bytes) -> int:
    """Where the header in *data* ends (after its ``---`` line), or -1 if not yet."""
    at = data.find(b"\n---")
    if at < 0:
        return -1
    end = data.find(b"\n", at + 4)
    return -1 if end < 0 else end + 1


def _stanza_types(header: bytes, name: str) -> tuple[str, ...]:
    lines = header.split(b"\n")
    if lines[0] + b"\n" != AGE_MAGIC:
        raise EnvelopeError(f"{name}: the age header is damaged: its first line is not age's")
    types = []
    for line in lines[1:]:
        if line.startswith(b"-> "):
            args = line[3:].split(b" ")
            kind = args[0].decode("ascii", "replace") if args[0] else "?"
            # rage adds a random "…-grease" stanza to every header, so that readers keep
            # ignoring types they do not know: it stands for no recipient.
            if not kind.endswith("-grease"):
                types.append(kind)
        elif line.startswith(b"---"):
            break
    if not types:
        raise EnvelopeError(f"{name}: the age header is damaged: it names no recipient")
    return tuple(types)


def _read_some(stream: Readable, size: int, name: str) -> bytes:
    try:
        return stream.read(size) or b""
    except OSError as exc:
        raise InputError(f"cannot read archive {name!r}: {exc.strerror or exc}") from exc


def read_header(
    stream: Readable, head: bytes, armored: bool, name: str
) -> tuple[bytes, EnvelopeInfo]:
    """Read an age header from *stream* (*head*: its first bytes, already read).

    Returns every byte read (to hand on to the decryption) and what the header says.

    :raises EnvelopeError: the header is cut short, longer than :data:`MAX_HEADER`, or
        malformed.
    """
    raw = bytearray(head)
    while True:
        plain = _dearmor(bytes(raw), name) if armored else bytes(raw)
        end = _header_end(plain)
        if end >= 0:
            return bytes(raw), EnvelopeInfo(armored, _stanza_types(plain[:end], name))
        if len(raw) >= MAX_HEADER:
            raise EnvelopeError(f"{name}: the age header is longer than {MAX_HEADER} bytes")
        more = _read_some(stream, 16384, name)
        if not more:
            raise EnvelopeError(f"{name}: the age header is cut short (truncated file)")
        raw += more


def _dearmor(raw: bytes, name: str) -> bytes:
    """The bytes the armor's complete lines so far encode (enough to find the header)."""
    import base64  # only here: reading an archive that is not armored never needs it
    import binascii

    lines = raw.split(b"\n")
    body = []
    for line in lines[1:-1]:  # the last piece may be an incomplete line
        line = line.rstrip(b"\r")
        if line.startswith(b"-----END"):
            break
        body.append(line)
        if len(line) < 64:
            break  # the last line of the armor
    data = b"".join(body)
    data = data[: len(data) - len(data) % 4]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{name}: the age armor is damaged: not base64") from None


# --------------------------------------------------------------------------- the byte pipe


class _Pipe:
    """Bytes handed from one thread to another: at most ``_DEPTH`` pieces wait.

    Either side may :meth:`close` it; the other then stops at its next call, so a thread
    blocked on a full or empty pipe never outlives what it works for.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_DEPTH)
        self.closed = threading.Event()

    def put(self, item: bytes | None) -> None:
        while True:
            if self.closed.is_set():
                raise BrokenPipeError("the other side stopped")
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def get(self) -> bytes | None:
        while True:
            if self.closed.is_set():
                raise BrokenPipeError("the other side stopped")
            try:
                return self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue

    def close(self) -> None:
        self.closed.set()


class _Output(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int | None: ...

    def flush(self) -> None: ...


# --------------------------------------------------------------------------- decrypting


class _Ciphertext:
    """What pyrage reads: the bytes already read for the header, then the input."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        self._head = head
        self._stream = stream
        #: An error of the input itself (not of the envelope), kept to report as such.
        self.error: OSError | None = None

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                out, self._head = self._head, b""
            else:
                out, self._head = self._head[:size], self._head[size:]
            return out
        try:
            return self._stream.read(size) or b""
        except OSError as exc:
            self.error = exc
            raise


class _PlainWriter:
    """What pyrage writes the plaintext to: gathered into pieces for the reader."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._size >= _PIECE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._parts:
            piece = b"".join(self._parts)
            self._parts, self._size = [], 0
            self._pipe.put(piece)


class Decrypted:
    """The plaintext of an age envelope, read as a stream; decrypted in a thread.

    ``read(n)`` returns at most *n* bytes, and raises the envelope's error where the
    plaintext stops short (wrong key: at the first read; damage: where it is).
    """

    def __init__(
        self, source: Readable, head: bytes, identities: list[Identity], name: str,
        info: EnvelopeInfo,
    ) -> None:
        self.name = name
        self.info = info
        self._pipe = _Pipe()
        self._source = _Ciphertext(head, source)
        self._identities = identities
        self._error: BaseException | None = None
        self._piece = b""
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="oxbak-age", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        writer = _PlainWriter(self._pipe)
        try:
            import pyrage

            # The stubs ask for BufferedIOBase; pyrage calls read() or write() only.
            pyrage.decrypt_io(self._source, writer, self._identities)  # type: ignore[arg-type]
            writer.flush()
        except BaseException as exc:  # raised in the reading thread, translated
            self._error = exc
        with contextlib.suppress(BrokenPipeError):
            self._pipe.put(None)

    def read(self, size: int = -1) -> bytes:
        """Up to *size* bytes of plaintext (all that is left for a negative *size*)."""
        if size < 0:
            return b"".join(iter(lambda: self.read(_PIECE), b""))
        while self._pos >= len(self._piece):
            if self._done:
                return b""
            item = self._pipe.get()
            if item is None:
                self._done = True
                self._thread.join()
                self._raise_if_failed()
                return b""
            self._piece, self._pos = item, 0
        pos = self._pos
        out = self._piece[pos : pos + size] if pos or size < len(self._piece) else self._piece
        self._pos = pos + len(out)
        return out

    def _raise_if_failed(self) -> None:
        exc = self._error
        if exc is None:
            return
        import pyrage

        name = self.name
        if self._source.error is not None:
            err = self._source.error
            raise InputError(f"cannot read archive {name!r}: {err.strerror or err}") from err
        if isinstance(exc, pyrage.DecryptError):
            why = _one_line(exc)
            if "No matching keys" in why:
                raise IdentityError(
                    f"{name}: none of the identities given can decrypt it "
                    f"(it is encrypted to {', '.join(self.info.stanzas)})",
                    self.info,
                ) from None
            raise EnvelopeError(f"{name}: the age envelope is damaged: {why}") from None
        if isinstance(exc, OSError):
            # pyrage's payload errors: "age file is truncated", "decryption error" (a
            # chunk that fails its tag: changed, cut inside, or followed by more bytes).
            why = _one_line(exc)
            raise EnvelopeError(
                f"{name}: the age envelope is damaged or cut short ({why}): "
                f"its payload is not what was encrypted"
            ) from None
        raise exc

    def close(self) -> None:
        """Stop the decryption (the reader has what it wanted, or gave up)."""
        self._pipe.close()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def open_archive(
    archive: Archive, identities: Sequence[IdentityFile] = ()
) -> Iterator[tuple[Input, EnvelopeInfo | None]]:
    """Open *archive* for reading, through its age envelope if it has one.

    The first bytes decide, before any zstd parsing: an age header (binary or armored)
    means the input handed out is the plaintext, a forward stream (no random access:
    age's payload is read front to back), decrypted with *identities*; anything else is
    handed out as it is. Also returns what the header says (None when not encrypted).

    :raises IdentityError: encrypted, and no identity was given, one cannot be loaded, or
        none opens it (raised at the first read). The first carries ``envelope``.
    :raises EnvelopeError: the envelope is damaged or cut short.
    """
    with open_input(archive) as inp:
        name = "standard input" if inp.name == "<stdin>" else inp.name
        if inp.random is not None:
            head = _peek(inp, name)
            armored = sniff(head)
            if armored is None:
                yield inp, None
                return
            head = b""  # read again through the stream, which is still at the start
        else:
            head = _read_at_least(inp.stream, _SNIFF, name)
            armored = sniff(head)
            if armored is None:
                yield Input(inp.name, _Prefixed(head, inp.stream), None), None
                return
        raw, info = read_header(inp.stream, head, armored, name)
        if "scrypt" in info.stanzas:
            raise IdentityError(
                f"{name} is encrypted with a passphrase, which oxbak does not read; "
                f"decrypt it with age and pipe it in: age -d FILE | oxbak unpack - DEST",
                info,
            )
        if not identities:
            raise IdentityError(
                f"{name} is encrypted ({info.describe()}); give the key with --identity FILE",
                info,
            )
        keys = load_identities(identities)
        plain = Decrypted(inp.stream, raw, keys, name, info)
        try:
            yield Input(inp.name, plain, None), info
        finally:
            plain.close()


def _peek(inp: Input, name: str) -> bytes:
    """The first bytes of a random-access input, its stream left where it was.

    (A file object without a descriptor is read at random through the same object, which
    moves it: it is put back.)
    """
    stream: Any = inp.stream  # a file object, or a stream of another location (no seek)
    assert inp.random is not None
    try:
        where = stream.tell() if stream.seekable() else None
    except (OSError, ValueError, AttributeError):
        where = None
    try:
        head = inp.random.pread(_SNIFF, 0)
        if where is not None:
            stream.seek(where)
    except OSError as exc:
        raise InputError(f"cannot read archive {name!r}: {exc.strerror or exc}") from exc
    return head


def _one_line(text: object) -> str:
    """A foreign message as one line: its first (pyrage's may add advice on a second)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(text).__name__


def _read_at_least(stream: Readable, size: int, name: str) -> bytes:
    parts = []
    got = 0
    while got < size:
        more = _read_some(stream, size - got, name)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _Prefixed:
    """A forward stream whose first bytes were already read to look at them."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        self._head = head
        self._stream = stream
        self.name = getattr(stream, "name", None)

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                rest = self._stream.read()
                out, self._head = self._head + (rest or b""), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._stream.read(size) or b""


# --------------------------------------------------------------------------- encrypting


class _SinkWriter:
    """What pyrage writes the age file to: the sink, its errors kept to report as such."""

    def __init__(self, out: _Output) -> None:
        self._out = out
        self.error: BaseException | None = None
        self.bytes_out = 0

    def write(self, data: bytes) -> int:
        try:
            view = memoryview(data)
            while view:
                n = self._out.write(view)
                if not n:
                    raise OSError("the output accepted no bytes")
                view = view[n:]
        except BaseException as exc:
            self.error = exc
            raise
        self.bytes_out += len(data)
        return len(data)

    def flush(self) -> None:
        try:
            self._out.flush()
        except BaseException as exc:
            self.error = exc
            raise


class _PlainReader:
    """What pyrage reads the plaintext from: the pieces the archive writer hands over."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._piece = b""
        self._pos = 0
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._piece):
            if self._eof:
                return b""
            item = self._pipe.get()
            if item is None:
                self._eof = True
                return b""
            self._piece, self._pos = item, 0
        pos = self._pos
        end = len(self._piece) if size < 0 else pos + size
        out = self._piece[pos:end] if pos or end < len(self._piece) else self._piece
        self._pos = pos + len(out)
        return out


class Encrypting:
    """An output stream whose bytes reach *out* inside an age envelope.

    Bytes written are handed (bounded: a few pieces wait) to pyrage's ``encrypt_io`` in
    a thread, which writes the age file to *out*. :meth:`finish` ends the envelope.
    """

    def __init__(self, out: _Output, recipients: list[Recipient]) -> None:
        self._pipe = _Pipe()
        self._sink = _SinkWriter(out)
        self._reader = _PlainReader(self._pipe)
        self._recipients = recipients
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="oxbak-age", daemon=True)
        self._thread.start()

    @property
    def bytes_out(self) -> int:
        """Bytes of the age file written so far."""
        return self._sink.bytes_out

    def _run(self) -> None:
        try:
            import pyrage

            # The stubs ask for BufferedIOBase; pyrage calls read() or write() only.
            pyrage.encrypt_io(self._reader, self._sink, self._recipients)  # type: ignore[arg-type]
        except BaseException as exc:  # raised in the writing thread
            self._error = exc
            self._pipe.close()  # a writer blocked on a full pipe stops

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Hand *data* to the encryption; raises the sink's error once it has one."""
        try:
            if len(data) <= _PIECE:
                # A copy only of what the caller may reuse; the frames are bytes already.
                self._pipe.put(data if isinstance(data, bytes) else bytes(data))
            else:
                # A frame of incompressible data is ~4 MiB: in pieces of _PIECE, what
                # waits in the pipe is bounded in bytes, not only in frames.
                view = memoryview(data)
                for at in range(0, len(view), _PIECE):
                    self._pipe.put(bytes(view[at : at + _PIECE]))
        except BrokenPipeError:
            self._thread.join()
            self._raise_if_failed()
            raise
        return len(data)

    def flush(self) -> None:
        """Nothing: the envelope's bytes reach the sink as pyrage writes them."""

    def finish(self) -> None:
        """End the plaintext; wait for the last chunk to be encrypted and written."""
        with contextlib.suppress(BrokenPipeError):
            self._pipe.put(None)
        self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without ending the envelope: what was written is to be thrown away."""
        self._pipe.close()
        self._thread.join(timeout=10)

    def _raise_if_failed(self) -> None:
        sink_error = self._sink.error
        if sink_error is not None:
            if isinstance(sink_error, OSError):
                raise OutputError(
                    f"cannot write the archive: {sink_error.strerror or sink_error}"
                ) from sink_error
            raise sink_error
        if self._error is not None:
            raise OxbakError(f"encryption failed: {_one_line(self._error)}") from self._error


@contextlib.contextmanager
def encrypting(out: _Output, recipients: list[Recipient]) -> Iterator[Encrypting]:
    """Within the block, what is written to the stream reaches *out* age-encrypted.

    On an exception the envelope is left unfinished (a reader would find it cut short)
    and the exception goes on: the caller throws away what was written.

    :raises OutputError: *out* could not take the bytes.
    """
    enc = Encrypting(out, recipients)
    try:
        yield enc
    except BaseException:
        enc.abort()
        raise
    enc.finish()
