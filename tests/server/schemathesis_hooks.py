"""schemathesis hooks for tests/server/test_openapi_fuzz.py (loaded by SCHEMATHESIS_HOOKS).

A JSON Schema cannot say "the bytes of a picture", so the edits' generated image parts are random
strings that the gateway rightly refuses as no image (400 invalid_image) before any adapter sees
them. In about half the fuzzed edits this puts real pictures in their place, of generated size,
mode, colour and format (PNG, JPEG, WebP, GIF), as multipart bytes or data URIs, so the cases
reach decoding, masks, size matching and every provider's edit. The rest stay as generated.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image

EDITS = "/v1/images/edits"
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
IMAGE_FIELDS = ("image", "image[]", "images")


@st.composite
def pictures(draw: Any, size: tuple[int, int] | None = None, mask: bool = False) -> tuple[bytes, str]:
    """A real image file and its media type; a mask is an RGBA PNG."""
    width, height = size or (draw(st.integers(1, 96)), draw(st.integers(1, 96)))
    image_format = "PNG" if mask else draw(st.sampled_from(sorted(FORMATS)))
    modes = ["RGBA"] if mask else ["RGB", "L"] if image_format == "JPEG" else ["RGB", "RGBA", "L", "P"]
    mode = draw(st.sampled_from(modes))
    colour = draw(st.integers(0, 255))
    picture = Image.new(mode, (width, height), colour if mode in ("L", "P") else (colour, 255 - colour, 90))
    buffer = io.BytesIO()
    picture.save(buffer, image_format)
    return buffer.getvalue(), FORMATS[image_format]


def _data_uri(picture: tuple[bytes, str]) -> str:
    data, media_type = picture
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


@st.composite
def with_pictures(draw: Any, body: dict[str, Any], multipart: bool) -> dict[str, Any]:
    """`body` with real images in its image field (and, if it has one, a transparent PNG mask of
    the first image's size, or of another)."""
    count = draw(st.integers(1, 3))
    first = draw(pictures())
    width, height = Image.open(io.BytesIO(first[0])).size
    images = [first, *(draw(pictures()) for _ in range(count - 1))]
    field = next((name for name in IMAGE_FIELDS if name in body), "image[]" if multipart else "image")
    changed = {name: value for name, value in body.items() if name not in IMAGE_FIELDS}
    changed[field] = [data for data, _ in images] if multipart else [_data_uri(p) for p in images]
    if "mask" in body:
        same_size = draw(st.booleans())
        mask = draw(pictures(size=(width, height) if same_size else None, mask=True))
        changed["mask"] = mask[0] if multipart else _data_uri(mask)
    return changed


@schemathesis.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy[Any]:
    if case.operation.path != EDITS or not isinstance(case.body, dict):
        return st.just(case)
    multipart = (case.media_type or "").startswith("multipart/")

    def rebuilt(body: dict[str, Any]) -> Any:
        case.body = body
        return case

    return st.one_of(st.just(case), with_pictures(case.body, multipart).map(rebuilt))
