"""The error tree drawn in errors.py's docstring is the tree of its classes."""

from __future__ import annotations

import inspect
import re

from imagegate import errors

# "│   ├── Name      404 some_error (code: the_code; ...)": depth from the indent, then the class,
# its status, its OpenAI type when it sets its own, and its default code when the tree names one.
LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<status>\d{3})(?: (?P<type>[a-z_]+_error))?"
                  r"(?:.*?code: (?P<code>[a-z_]+))?")


def drawn_tree() -> list[tuple[int, str, int, str | None, str | None]]:
    assert errors.__doc__ is not None
    rows = []
    for line in errors.__doc__.splitlines():
        found = LINE.match(line.strip("\n")[4:])  # the docstring indents the drawing by four spaces
        if found:
            depth = len(found["indent"]) // 4
            rows.append((depth, found["name"], int(found["status"]), found["type"], found["code"]))
    return rows


def test_the_docstring_tree_matches_the_error_classes() -> None:
    rows = drawn_tree()
    parents: list[type[errors.ImagegateError]] = []
    for depth, name, status, error_type, code in rows:
        cls = getattr(errors, name)
        del parents[depth:]
        if parents:
            assert cls.__bases__ == (parents[-1],), f"{name} is drawn under {parents[-1].__name__}"
            assert error_type in (None, cls.error_type), name
            if error_type is None:
                assert cls.error_type == parents[-1].error_type, f"{name}'s own type {cls.error_type} is not drawn"
        else:
            assert cls is errors.ImagegateError
        assert cls.status_code == status, name
        assert code in (None, cls.default_code), name
        parents.append(cls)
    classes = {name for name, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, errors.ImagegateError) and obj.__module__ == errors.__name__}
    assert {name for _, name, *_ in rows} == classes
