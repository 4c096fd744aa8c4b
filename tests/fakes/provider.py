"""An in-process provider for unit tests of the core, with no sockets (as simonw/llm's MockModel).

    fake = FakeProvider("gemini")
    fake.enqueue(UpstreamUnavailable("busy"))        # the next call fails so
    fake.enqueue(result(2), delay=0.05)             # the one after returns two images, late
    ...
    fake.history                                    # every ProviderRequest it was sent, in order

With nothing queued a call succeeds with `request.n` solid PNGs of the request's layout.
A queued item is a `ProviderResult`, an exception to raise, or a callable taking the request
and returning either (to answer from what was sent). A `delay` is awaited before answering (it
is where a test cancels, or where the deadline strikes).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagegate.catalog import Catalog, ModelEntry, builtin_data, parse_entries
from imagegate.imaging import ImageBytes
from imagegate.providers import ImageProvider, ProviderImage, ProviderRequest, ProviderResult

from .images import solid_png

Answer = ProviderResult | BaseException | Callable[[ProviderRequest], "ProviderResult | BaseException"]


def result(
    n: int = 1,
    width: int = 64,
    height: int = 64,
    *,
    color: tuple[int, int, int] = (10, 20, 30),
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> ProviderResult:
    """A result of `n` solid PNGs."""
    png = solid_png(width, height, color)
    return ProviderResult(
        images=[ProviderImage(ImageBytes(png), "image/png") for _ in range(n)],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


@dataclass
class _Queued:
    answer: Answer
    delay: float


class FakeProvider(ImageProvider):
    provider_id = "fake"
    key_env_var = "FAKE_PROVIDER_KEY"

    def __init__(self, provider_id: str = "fake", *, delay: float = 0.0) -> None:
        self.provider_id = provider_id  # type: ignore[misc]  # one class stands in for any provider
        self.delay = delay  # before every answer that has no delay of its own
        self.history: list[ProviderRequest] = []
        self._queue: deque[_Queued] = deque()
        self.closed = False

    def enqueue(self, answer: Answer, *, delay: float | None = None) -> None:
        self._queue.append(_Queued(answer, self.delay if delay is None else delay))

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._answer(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._answer(request)

    async def _answer(self, request: ProviderRequest) -> ProviderResult:
        self.history.append(request)
        queued = self._queue.popleft() if self._queue else _Queued(self._default, self.delay)
        if queued.delay:
            await asyncio.sleep(queued.delay)
        answer = queued.answer
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(request)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @staticmethod
    def _default(request: ProviderRequest) -> ProviderResult:
        return result(request.n, request.layout.width, request.layout.height)

    async def aclose(self) -> None:
        self.closed = True


# --- a small catalog for unit tests -----------------------------------------------------------

SMALL_SIZES = [
    {"aspect_ratio": "1:1", "resolution": "1K", "width": 64, "height": 64},
    {"aspect_ratio": "16:9", "resolution": "1K", "width": 96, "height": 54},
]
FALLBACK_PARAM = {
    "type": "boolean",
    "description": "serve the fallback model at capacity",
    "t2i": "supported",
    "edit": "supported",
    "default": False,
}


def model_entry(
    model_id: str = "m", *, providers: dict[str, dict[str, Any]] | None = None, **fields: Any
) -> ModelEntry:
    """A catalog entry with tiny sizes (64x64 at 1:1), the gateway's default parameters, and
    `providers` as {provider id: binding fields} (each binding's upstream_model defaults to the id)."""
    bindings = {p: {"upstream_model": f"{p}/{model_id}", **b} for p, b in (providers or {"gemini": {}}).items()}
    raw: dict[str, Any] = {
        "id": model_id,
        "name": model_id,
        "modes": ["t2i", "edit"],
        "resolution_tiers": ["1K"],
        "default_resolution": "1K",
        "sizes": SMALL_SIZES,
        "price": {"per_image": 0.01},
        "parameters": {},
        "providers": bindings,
        **fields,
    }
    (entry,) = parse_entries({"models": [raw]}, builtin_data().get("default_parameters"))
    return entry


def small_catalog(*entries: ModelEntry) -> Catalog:
    return Catalog(list(entries) or [model_entry()])
