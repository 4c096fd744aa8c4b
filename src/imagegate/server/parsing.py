"""Request bodies -> `ImageJob`: JSON for generations, multipart or JSON for edits.

Multipart takes files as `image` or `image[]` (the openai SDK sends a list as `image[]`) and a
`mask`; every other part is a form field, with `key[sub]` folded back into nested dicts the way
the SDK's `extra_body` flattens them.

Whatever a client sends must be something the gateway can hand on: text is UTF-8 (no lone
surrogates, no other charsets), numbers are finite, nesting is shallow. Anything else is a 400
naming the field here, before it can fail an encoder deep inside an upstream call as a 500.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import aclosing
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..catalog import Mode
from ..errors import InvalidRequest
from ..service import ImageJob, ImageSource

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_FIELD = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])+)")
MAX_FILES = 32
MAX_FIELDS = 1000
# Levels of objects/arrays (or `a[b][c]` brackets) in one request field: real clients nest two or
# three; hundreds would overflow recursive encoders (RecursionError) on the way upstream.
MAX_NESTING = 32
UTF8_NAMES = frozenset({"utf-8", "utf8"})


def printable(text: str) -> str:
    """`text` as it can be echoed in an error (a lone surrogate as \\ud800)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, param: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                f"'{printable(param)}' contains text that is not valid Unicode (a lone surrogate).",
                param=printable(param),
                code="invalid_text",
            ) from exc


def check_values(params: dict[str, Any]) -> None:
    """Every field's key and value, walked without recursion: text must be valid Unicode, numbers
    finite (Python's json takes NaN and Infinity, no upstream does), nesting at most MAX_NESTING."""
    for name, value in params.items():
        _check_text(name, name)
        stack: list[tuple[Any, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str):
                _check_text(item, name)
            elif isinstance(item, float) and not math.isfinite(item):
                raise InvalidRequest(
                    f"'{printable(name)}' contains {item!r}; numbers must be finite.",
                    param=printable(name),
                    code="invalid_number",
                )
            elif isinstance(item, (dict, list)):
                if depth >= MAX_NESTING:
                    raise InvalidRequest(
                        f"'{printable(name)}' is nested more than {MAX_NESTING} levels deep.",
                        param=printable(name),
                        code="nested_too_deeply",
                    )
                if isinstance(item, dict):
                    for key in item:
                        _check_text(key, name)
                    stack.extend((child, depth + 1) for child in item.values())
                else:
                    stack.extend((child, depth + 1) for child in item)


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(
            "The request body is not valid JSON (or is nested too deeply).", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    check_values(data)
    return data


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() in ("application/json", "")


async def parse_generation(request: Request) -> ImageJob:
    if not _is_json(request):
        raise InvalidRequest(
            "images/generations takes a JSON body (Content-Type: application/json).", code="unsupported_content_type"
        )
    params = await read_json(request)
    for name in ("image", "images", "mask"):
        if name in params:
            raise InvalidRequest(f"'{name}' belongs to images/edits, not images/generations.", param=name)
    return ImageJob(mode="t2i", params=params)


async def parse_edit(request: Request) -> ImageJob:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return await _parse_multipart_edit(request)
    if _is_json(request):
        return _json_edit(await read_json(request))
    raise InvalidRequest("images/edits takes multipart/form-data or a JSON body.", code="unsupported_content_type")


def _set_nested(target: dict[str, Any], key: str, value: str) -> None:
    """'a[b][c]' = v sets target['a']['b']['c']; 'a[]' appends to target['a']."""
    match = _FIELD.fullmatch(key)
    if match is None:
        target[key] = value
        return
    path = [match.group(1), *_BRACKETS.findall(match.group(2))]
    if len(path) > MAX_NESTING:
        raise InvalidRequest(
            f"Form field {printable(key[:80])!r}... is nested more than {MAX_NESTING} levels deep.",
            param=printable(path[0]),
            code="nested_too_deeply",
        )
    node: Any = target
    for part, following in zip(path, path[1:], strict=False):
        container: Any = [] if following == "" else {}
        child = node.setdefault(part, container) if isinstance(node, dict) else None
        if type(child) is not type(container):
            raise InvalidRequest(f"Form field {key!r} conflicts with another field of that name.", param=path[0])
        node = child
    if path[-1] == "":
        node.append(value)
    else:
        node[path[-1]] = value


def _utf8(raw: bytes | bytearray, param: str) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"Form field {printable(param)!r} is not valid UTF-8.", param=printable(param), code="invalid_text"
        ) from exc


def _charset(content_type: bytes | str) -> str | None:
    _, options = parse_options_header(content_type)
    charset = options.get(b"charset")
    return None if charset is None else charset.decode("latin-1").strip().lower()


class Utf8MultiPartParser(MultiPartParser):
    """Starlette's parser decodes text with the body's declared charset (utf-7 and unicode_escape
    can make lone surrogates) and falls back to latin-1 on bad bytes (silent mojibake). Here names
    and text fields are UTF-8, checked, and any other declared charset is a 400."""

    def on_headers_finished(self) -> None:
        part = self._current_part
        _, options = parse_options_header(part.content_disposition)
        name = _utf8(options.get(b"name", b""), "name")
        super().on_headers_finished()
        part.field_name = name
        for header, value in part.item_headers:
            charset = _charset(value) if header == b"content-type" else None
            if part.file is None and charset is not None and charset not in UTF8_NAMES:
                raise InvalidRequest(
                    f"Form field {printable(name)!r} declares charset {charset!r}; text fields must be UTF-8.",
                    param=printable(name),
                    code="unsupported_charset",
                )

    async def parse(self) -> FormData:
        form = await super().parse()
        # A body cut off inside a file part leaves that part's spool file out of the form (so
        # form.close() never sees it): close it here rather than leak a descriptor per request.
        kept = {id(value.file) for _, value in form.multi_items() if isinstance(value, UploadFile)}
        for spool in self._files_to_close_on_error:
            if id(spool) not in kept:
                spool.close()
        return form

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            self.items.append((part.field_name, _utf8(part.data, part.field_name)))  # strict: no surrogates
        else:
            super().on_part_end()


async def read_form(request: Request) -> FormData:
    charset = _charset(request.headers.get("content-type", ""))
    if charset is not None and charset not in UTF8_NAMES:
        raise InvalidRequest(
            f"The multipart body declares charset {charset!r}; text fields must be UTF-8.", code="unsupported_charset"
        )
    try:
        async with aclosing(request.stream()) as stream:
            return await Utf8MultiPartParser(
                request.headers, stream, max_files=MAX_FILES, max_fields=MAX_FIELDS
            ).parse()
    except MultiPartException as exc:
        raise InvalidRequest(exc.message, code="invalid_multipart") from exc


async def _parse_multipart_edit(request: Request) -> ImageJob:
    form = await read_form(request)
    try:
        images: list[ImageSource] = []
        mask: ImageSource | None = None
        params: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if key in ("image", "image[]"):
                    images.append(data)
                elif key == "mask":
                    mask = data
                else:
                    raise InvalidRequest(
                        f"Unexpected file field {key!r}; files go in 'image', 'image[]' or 'mask'.", param=key
                    )
            elif key in ("image", "image[]"):
                images.append(value)  # a URL or data URI sent as a plain field
            elif key == "mask":
                mask = value or None
            elif key == "_charset_":  # an HTML form naming its encoding: only UTF-8 is read
                if value.strip().lower() not in UTF8_NAMES:
                    raise InvalidRequest(
                        f"'_charset_' is {printable(value)!r}; text fields must be UTF-8.",
                        param="_charset_",
                        code="unsupported_charset",
                    )
            else:
                _set_nested(params, key, value)
        check_values(params)
        return ImageJob(mode="edit", params=params, images=images, mask=mask)
    finally:
        await form.close()


def _image_ref(value: Any, param: str) -> ImageSource:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        if "file_id" in value:
            raise InvalidRequest("File ids are not supported; send image_url (a URL or a data URI).", param=param)
        url = value.get("image_url")
        if isinstance(url, dict):  # chat-style {"image_url": {"url": ...}}
            url = url.get("url")
        if isinstance(url, str) and url:
            return url
    raise InvalidRequest(f"Each '{param}' entry must be a URL, a data URI or {{\"image_url\": ...}}.", param=param)


def _json_edit(body: dict[str, Any]) -> ImageJob:
    param = "images" if "images" in body else "image"
    raw = body.pop("images", None)
    if raw is None:
        raw = body.pop("image", None)
    else:
        body.pop("image", None)
    refs = raw if isinstance(raw, list) else ([] if raw is None else [raw])
    images = [_image_ref(ref, param) for ref in refs]
    mask_raw = body.pop("mask", None)
    mask = _image_ref(mask_raw, "mask") if mask_raw not in (None, "") else None
    mode: Mode = "edit"
    return ImageJob(mode=mode, params=body, images=images, mask=mask, image_param=param)
