"""Form-field folding for multipart edits: the openai SDK flattens extra_body dicts as key[sub]."""

from __future__ import annotations

import pytest

from imagegate.errors import InvalidRequest
from imagegate.server.parsing import _set_nested


def fold(*pairs: tuple[str, str]) -> dict[str, object]:
    target: dict[str, object] = {}
    for key, value in pairs:
        _set_nested(target, key, value)
    return target


def test_plain_nested_and_list_fields() -> None:
    assert fold(
        ("n", "2"),
        ("image_config[aspect_ratio]", "16:9"),
        ("tags[]", "a"),
        ("tags[]", "b"),
        ("x[y][z]", "1"),
        ("x[y][w]", "2"),
    ) == {
        "n": "2",
        "image_config": {"aspect_ratio": "16:9"},
        "tags": ["a", "b"],
        "x": {"y": {"z": "1", "w": "2"}},
    }


def test_repeated_plain_field_keeps_the_last_value() -> None:
    assert fold(("n", "1"), ("n", "3")) == {"n": "3"}


@pytest.mark.parametrize(
    "pairs", [(("a", "1"), ("a[b]", "2")), (("a[]", "1"), ("a[b]", "2")), (("a[b]", "1"), ("a[]", "2"))]
)
def test_conflicting_shapes_are_a_400_naming_the_field(pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(InvalidRequest) as info:
        fold(*pairs)
    assert info.value.param == "a"


def test_odd_names_are_kept_as_they_are() -> None:
    assert fold(("[weird", "1"), ("a]b", "2")) == {"[weird": "1", "a]b": "2"}
