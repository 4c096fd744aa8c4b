"""Where a value goes in an upstream request: the catalog's `to`, and the one helper that puts it there.

A binding's `to` has one meaning: one or more paths in the upstream request body, joined by
` + ` where one value becomes several fields (seedream's size -> `input.size + input.width +
input.height`). A path is dotted keys (`generationConfig.seed`, `input.seed`, `safety_tolerance`);
a key may end in `[N]` (an element of a list the adapter builds: `contents[0].parts[0].text`) or
`[]` (every element, or a multipart list field: `image[]`). Paths are checked when the catalog
loads (`parse_to`), so prose can no longer hide in `to`.

`place(body, path, value)` writes a value at a plain path (dicts created on the way); paths with
list indices are built by the adapter itself and are only reserved against pass-through
(`reserved_prefix`).
"""

from __future__ import annotations

import re
from typing import Any

# A key: a letter or underscore, then letters, digits, `_` or `-`; optionally `[N]` or `[]`.
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\[[0-9]*\])?")
JOIN = " + "


def check_path(path: str) -> str:
    """`path` itself when it is well-formed, else ValueError naming what is wrong."""
    if not path:
        raise ValueError("an empty path")
    for segment in path.split("."):
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(f"{path!r} is not a dotted path (bad key {segment!r})")
    return path


def parse_to(to: str | list[str]) -> tuple[str, ...]:
    """The paths of a `to` (a ` + `-joined string or a list of paths), each checked."""
    parts = to if isinstance(to, list) else to.split("+")
    paths = tuple(check_path(p.strip()) for p in parts)
    if len(set(paths)) != len(paths):
        raise ValueError(f"{JOIN.join(paths)!r} names a path twice")
    return paths


def is_plain(path: str) -> bool:
    """Dotted keys only: a path `place` can write."""
    return "[" not in path


def keys(path: str) -> list[str]:
    return path.split(".")


def reserved_prefix(path: str) -> tuple[str, ...]:
    """The part of `path` the gateway owns against pass-through: all of a plain path; up to the
    first list of an indexed one (`contents[0].parts[0].text` -> ('contents',): the whole list is
    the gateway's)."""
    prefix: list[str] = []
    for segment in keys(path):
        name, bracket, _ = segment.partition("[")
        prefix.append(name)
        if bracket:
            break
    return tuple(prefix)


def place(body: dict[str, Any], path: str, value: Any) -> None:
    """body['a']['b'] = value for 'a.b', creating dicts on the way (gemini's old `set_path`)."""
    if not is_plain(path):
        raise ValueError(f"{path!r} indexes a list: the adapter builds it, place() cannot")
    *parents, leaf = keys(path)
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
