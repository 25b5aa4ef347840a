"""Hypothesis strategies: file names (unicode and raw bytes) and whole trees."""

from __future__ import annotations

from hypothesis import strategies as st

from treeutil import Node

_FORBIDDEN = {b"", b".", b".."}


def _ok(name: bytes) -> bool:
    return name not in _FORBIDDEN and b"/" not in name and b"\0" not in name


unicode_names = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
        min_size=1,
        max_size=24,
    )
    .map(lambda s: s.encode("utf-8"))
    .filter(lambda b: _ok(b) and len(b) <= 255)
)

raw_names = st.binary(min_size=1, max_size=24).filter(_ok)

names = st.one_of(
    unicode_names,
    raw_names,
    st.sampled_from(
        [b"manifest.json", b"index.jsonl", b"tree", b"a\\xff", b" sp ace", b"-dash", b"x" * 255]
    ),
)

mtimes = st.integers(min_value=0, max_value=2**33).flatmap(
    lambda s: st.integers(min_value=0, max_value=999_999_999).map(lambda ns: s * 1_000_000_000 + ns)
)
#: Mostly before today (a file settled long ago), sometimes any time up to 2242.
past_mtimes = st.one_of(
    st.integers(min_value=0, max_value=1_700_000_000 * 1_000_000_000),
    st.integers(min_value=0, max_value=1_700_000_000 * 1_000_000_000),
    mtimes,
)
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o700, 0o640, 0o000, 0o1755])
dir_modes = st.sampled_from([0o755, 0o700, 0o750, 0o555, 0o1777])
contents = st.one_of(st.binary(max_size=2048), st.just(b""), st.binary(min_size=600, max_size=600))


#: Modes that leave the owner free to read, write and search (an edit needs no chmod
#: first), without setuid or setgid (a restore drops them).
owner_file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o640, 0o700, 0o1755, 0o750])
owner_dir_modes = st.sampled_from([0o755, 0o700, 0o750, 0o1777, 0o711])


def _files(
    modes: st.SearchStrategy[int] = file_modes, times: st.SearchStrategy[int] = mtimes
) -> st.SearchStrategy[Node]:
    return st.builds(
        lambda d, m, t: Node("file", data=d, mode=m, mtime_ns=t), contents, modes, times
    )


symlink_targets = st.one_of(
    names,
    st.lists(st.sampled_from([b"..", b"a", b"b", b"."]), min_size=1, max_size=4).map(b"/".join),
    st.just(b"/etc/passwd"),
)


def _symlinks(times: st.SearchStrategy[int] = mtimes) -> st.SearchStrategy[Node]:
    return st.builds(lambda t, m: Node("symlink", target=t, mtime_ns=m), symlink_targets, times)


def _dirs(
    children: st.SearchStrategy[dict[bytes, Node]],
    modes: st.SearchStrategy[int] = dir_modes,
    times: st.SearchStrategy[int] = mtimes,
) -> st.SearchStrategy[Node]:
    return st.builds(
        lambda c, m, t: Node("dir", children=c, mode=m, mtime_ns=t), children, modes, times
    )


leaf = st.one_of(_files(), _files(), _symlinks())


def trees_of(
    fmodes: st.SearchStrategy[int] = file_modes,
    dmodes: st.SearchStrategy[int] = dir_modes,
    max_leaves: int = 25,
    times: st.SearchStrategy[int] = mtimes,
) -> st.SearchStrategy[dict[bytes, Node]]:
    """Trees of files, symlinks and directories with these modes and mtimes, at most
    *max_leaves*."""
    leaves = st.one_of(_files(fmodes, times), _files(fmodes, times), _symlinks(times))
    return st.recursive(
        st.dictionaries(names, leaves, max_size=5),
        lambda children: st.dictionaries(
            names, st.one_of(leaves, _dirs(children, dmodes, times)), max_size=5
        ),
        max_leaves=max_leaves,
    )


trees = trees_of()
#: Trees whose every entry its owner may change without a chmod (tests that edit them).
owner_trees = trees_of(owner_file_modes, owner_dir_modes, max_leaves=15, times=past_mtimes)


@st.composite
def trees_with_hardlinks(
    draw: st.DrawFn, base: st.SearchStrategy[dict[bytes, Node]] = trees
) -> dict[bytes, Node]:
    """A tree (of *base*) plus, at the top level, hardlinks to some of its top-level files."""
    tree = draw(base)
    files = [name for name, node in tree.items() if node.kind == "file"]
    for i, name in enumerate(draw(st.lists(st.sampled_from(files), max_size=3)) if files else []):
        link = b"hl-%d-" % i + name[:200]
        if link not in tree:
            tree[link] = Node("hardlink", target=name)
    return tree
