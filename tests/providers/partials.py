"""An `on_partial` listener for adapter tests of streamed calls (Gemini's thought images, OpenAI's
partial_image events)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from imagegate.providers import ProviderImage
from tests.fakes.images import pixel_at


@dataclass
class Partials:
    """Keeps what it was given, and when, and signals the first."""

    images: list[ProviderImage] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, image: ProviderImage) -> None:
        self.images.append(image)
        self.times.append(time.monotonic())
        self.first.set()

    def colors(self) -> list[tuple[int, ...]]:
        return [pixel_at(image.data)[:3] for image in self.images]
