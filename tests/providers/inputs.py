"""Input images shared by the provider contract tests."""

from __future__ import annotations

import base64

from imagegate.providers import InputImage

from ..fakes.images import solid_jpeg, solid_png, solid_webp

PNG = InputImage(solid_png(64, 48, (10, 200, 30)), "image/png", 64, 48)
JPEG = InputImage(solid_jpeg(40, 40, (200, 10, 30)), "image/jpeg", 40, 40)
WEBP = InputImage(solid_webp(32, 32, (1, 2, 250)), "image/webp", 32, 32)
MASK = InputImage(solid_png(64, 48, (0, 0, 0, 0)), "image/png", 64, 48)


def data_uri(image: InputImage) -> str:
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"
