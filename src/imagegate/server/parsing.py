"""Request bodies -> `ImageJob`: JSON for generations, multipart or JSON for edits.

Multipart takes files as `image` or `image[]` (the openai SDK sends a list as `image[]`) and a
`mask`; every other part is a form field, with `key[sub]` folded back into nested dicts the way
the SDK's `extra_body` flattens them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..catalog import Mode
from ..errors import InvalidRequest
from ..service import ImageJob, ImageSource

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_FIELD = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])+)")
MAX_FILES = 32
MAX_FIELDS = 1000


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest("The request body is not valid JSON (or is nested too deeply).",
                             code="invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() in ("application/json", "")


async def parse_generation(request: Request) -> ImageJob:
    if not _is_json(request):
        raise InvalidRequest("images/generations takes a JSON body (Content-Type: application/json).",
                             code="unsupported_content_type")
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
    node: Any = target
    for part, following in zip(path, path[1:], strict=False):
        container: Any = [] if following == "" else {}
        child = node.setdefault(part, container) if isinstance(node, dict) else None
        if type(child) is not type(container):
            raise InvalidRequest(f"Form field {key!r} conflicts with another field of that name.",
                                 param=path[0])
        node = child
    if path[-1] == "":
        node.append(value)
    else:
        node[path[-1]] = value


async def _parse_multipart_edit(request: Request) -> ImageJob:
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
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
                    raise InvalidRequest(f"Unexpected file field {key!r}; files go in 'image', 'image[]' or 'mask'.",
                                         param=key)
            elif key in ("image", "image[]"):
                images.append(value)  # a URL or data URI sent as a plain field
            elif key == "mask":
                mask = value or None
            else:
                _set_nested(params, key, value)
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
