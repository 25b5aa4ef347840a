"""Name rules: member names, order, link containment, display."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oxbak.errors import LimitExceededError, UnsafeArchiveError
from oxbak.paths import display, link_stays_inside, member_name, parse_member_name, sort_key
from strategies import names


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        (b"tree", b""),
        (b"tree/", b""),
        (b"tree/a", b"a"),
        (b"tree/a/b/", b"a/b"),
        (b"tree/caf\xe9", b"caf\xe9"),
    ],
)
def test_parse_accepts(name: bytes, rel: bytes) -> None:
    assert parse_member_name(name) == rel


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"/etc/passwd", r"^refusing member '/etc/passwd': absolute path$"),
        (b"tree/../x", r"^refusing member 'tree/\.\./x': path component '\.\.' not allowed$"),
        (b"tree/a/../../x", r"component '\.\.' not allowed$"),
        (b"tree/./x", r"component '\.' not allowed$"),
        (b"tree//x", r"component '' not allowed$"),
        (b"other/x", r"^refusing member 'other/x': outside tree/$"),
        (b"manifest.json", r"outside tree/$"),
        (b"tree/a\0b", r"NUL byte$"),
        (b"", r"^refusing member with an empty name$"),
    ],
)
def test_parse_refuses(name: bytes, message: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=message):
        parse_member_name(name)


def test_parse_limits() -> None:
    with pytest.raises(LimitExceededError, match="limit 4096"):
        parse_member_name(b"tree/" + b"a/" * 2100)
    with pytest.raises(LimitExceededError, match="limit 255"):
        parse_member_name(b"tree/" + b"a" * 256)


def _reference_parse(name: bytes) -> bytes | None:
    """The name rules written plainly: the relative path, or None for a refused name."""
    if len(name) > 4096 or b"\0" in name:
        return None
    if name in (b"tree", b"tree/"):
        return b""
    if not name.startswith(b"tree/"):
        return None
    rel = name[5:]
    rel = rel[:-1] if rel.endswith(b"/") else rel
    parts = rel.split(b"/")
    if any(p in (b"", b".", b"..") or len(p) > 255 for p in parts):
        return None
    return rel


_name_pieces = st.sampled_from([b"a", b"b.json", b".", b"..", b"", b"/", b"\0", b"x" * 255])


@given(
    st.sampled_from([b"tree/", b"tree", b"", b"/", b"other/"]),
    st.lists(_name_pieces, max_size=6),
    st.sampled_from([b"", b"/", b"//"]),
)
def test_parse_agrees_with_the_plain_rules(head: bytes, pieces: list[bytes], tail: bytes) -> None:
    # parse_member_name has a fast path for common names; it must decide exactly as the
    # rules do, and refuse (with an oxbak error) whatever they refuse.
    name = head + b"/".join(pieces) + tail
    expected = _reference_parse(name)
    if expected is None:
        with pytest.raises((UnsafeArchiveError, LimitExceededError)):
            parse_member_name(name)
    else:
        assert parse_member_name(name) == expected


@given(st.lists(names, min_size=1, max_size=5))
def test_member_name_roundtrip(parts: list[bytes]) -> None:
    rel = b"/".join(parts)
    if len(rel) + 6 > 4096:
        return
    assert parse_member_name(member_name(rel)) == rel
    assert parse_member_name(member_name(rel, is_dir=True)) == rel


def test_sort_key_is_preorder() -> None:
    paths = [b"a.txt", b"a/b", b"a", b"", b"a/b/c", b"b"]
    assert sorted(paths, key=sort_key) == [b"", b"a", b"a/b", b"a/b/c", b"a.txt", b"b"]


@given(
    st.lists(st.binary(min_size=1, max_size=6), max_size=4),
    st.lists(st.binary(min_size=1, max_size=6), max_size=4),
)
def test_display_is_injective(a: list[bytes], b: list[bytes]) -> None:
    x, y = b"/".join(a), b"/".join(b)
    assert (display(x) == display(y)) == (x == y)


def test_display_escapes() -> None:
    assert display(b"caf\xe9") == "caf\\xe9"
    assert display(b"a\\xe9") == "a\\\\xe9"
    assert display("日本".encode()) == "日本"
    # Nothing a terminal would act on gets through: newlines, escapes, C1 controls, U+2028.
    assert display(b"a\nb") == "a\\u000ab"
    assert display(b"\x1b[31mred") == "\\u001b[31mred"
    assert display("\u2028".encode()) == "\\u2028"
    # U+0085 (valid UTF-8) and the byte 0x85 (not UTF-8) stay distinct.
    assert display("\u0085".encode()) == "\\u0085" != display(b"\x85") == "\\x85"


@pytest.mark.parametrize(
    ("link", "target", "links", "inside"),
    [
        (b"a", b"b", {}, True),
        (b"d/a", b"../b", {}, True),
        (b"d/a", b"../../b", {}, False),
        (b"a", b"/etc/passwd", {}, False),
        (b"a", b"", {}, False),
        (b"a", b".", {}, True),
        (b"a", b"..", {}, False),
        # s -> .. from sub/ is the root; t -> s/../x then climbs out of it.
        (b"sub/t", b"s/../x", {b"sub/s": b".."}, False),
        (b"sub/t", b"s/x", {b"sub/s": b".."}, True),
        (b"a", b"b/c", {b"b": b"/etc"}, False),
        (b"a", b"b", {b"b": b"a"}, True),  # a loop: leads nowhere (ELOOP), restored as is
        # A chain the kernel follows to /etc is outside; one it gives up on (ELOOP) is not.
        (b"a", b"l1", {b"l%d" % i: b"l%d" % (i + 1) for i in range(1, 39)} | {b"l39": b"/etc"}, False),
        (b"a", b"l1", {b"l%d" % i: b"l%d" % (i + 1) for i in range(1, 45)} | {b"l45": b"/etc"}, True),
        (b"x/y/z", b"../../q", {}, True),
    ],
)
def test_link_stays_inside(
    link: bytes, target: bytes, links: dict[bytes, bytes], inside: bool
) -> None:
    all_links = {**links, link: target}
    assert link_stays_inside(link, target, all_links.get) is inside
