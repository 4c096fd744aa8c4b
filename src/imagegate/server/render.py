"""Outcomes and errors -> OpenAI-shaped JSON responses with imagegate's headers."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .. import jsonio
from ..catalog import ModelEntry
from ..errors import ImagegateError
from ..gateway import Gateway
from ..pipeline import adjustment_fields
from ..providers import TokenSplit
from ..router import Router
from ..service import ImagesOutcome

ADJUSTED_HEADER = "x-imagegate-adjusted"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonio.dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(exc: ImagegateError) -> Response:
    return json_response(exc.to_openai_json(), exc.status_code, exc.headers())


def images_response(outcome: ImagesOutcome) -> Response:
    # Base64 needs no JSON escaping, so it is spliced in after encoding the rest: the encoder would
    # otherwise scan megabytes of it, and an upstream's base64 goes out as the bytes it came in.
    nonce = secrets.token_hex(8)
    splices: dict[bytes, list[bytes | memoryview]] = {}
    data = []
    both = outcome.response_format == "both"
    for index, image in enumerate(outcome.images):
        item: dict[str, Any] = {"revised_prompt": image.revised_prompt}
        if image.url is not None and not image.url.startswith("data:"):
            item["url"] = image.url
        elif image.url is not None:  # sync_mode: a data URI
            item["url"] = placeholder = f"url-{nonce}-{index}"
            splices[f'"{placeholder}"'.encode()] = [f'"{image.url}"'.encode()]
        if image.url is None or both:
            item["b64_json"] = placeholder = f"b64-{nonce}-{index}"
            splices[f'"{placeholder}"'.encode()] = [b'"', image.blob.b64_bytes(), b'"']
        data.append(item)
    effective = outcome.effective()
    body = {
        "created": outcome.created,
        "data": data,
        "output_format": effective["output_format"],
        "size": f"{effective['width']}x{effective['height']}",
        "usage": usage_object(outcome),
        "effective": effective,
        "adjustments": adjustment_list(outcome),
    }
    return PiecesResponse(
        splice(jsonio.dumps(body), splices), headers=outcome_headers(outcome), media_type="application/json"
    )


def usage_object(outcome: ImagesOutcome) -> dict[str, Any]:
    """The answer's `usage`: OpenAI's token fields plus what imagegate billed."""
    return {
        "model": outcome.model,
        "provider": outcome.provider,
        "images": len(outcome.images),
        "cost": outcome.cost,
        "currency": outcome.currency,
        "cost_estimated": outcome.cost_estimated,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "total_tokens": outcome.input_tokens + outcome.output_tokens,
        # OpenAI's schema (its SDK types require input_tokens_details); see ProviderResult for
        # how a split is counted when the upstream gives none.
        "input_tokens_details": _split(outcome.input_details),
        "output_tokens_details": _split(outcome.output_details),
    }


def adjustment_list(outcome: ImagesOutcome) -> list[dict[str, str]]:
    return adjustment_fields(outcome.adjustments)


def outcome_headers(outcome: ImagesOutcome) -> dict[str, str]:
    headers = {"x-imagegate-provider": outcome.provider, "x-imagegate-model": outcome.model}
    if outcome.adjustments:
        headers[ADJUSTED_HEADER] = "; ".join(a.header_value() for a in outcome.adjustments)
    return headers


def splice(text: bytes, splices: dict[bytes, list[bytes | memoryview]]) -> list[bytes | memoryview]:
    """Replace each placeholder (in order of appearance) in one pass over the small JSON text:
    the body as pieces, each image's base64 among them as it is (no copy of it is made here)."""
    pieces: list[bytes | memoryview] = []
    position = 0
    for placeholder, value in splices.items():
        found = text.index(placeholder, position)
        pieces += [text[position:found], *value]
        position = found + len(placeholder)
    pieces.append(text[position:])
    return pieces


def body_of(response: Response) -> bytes:
    """A response's whole body as one buffer."""
    return response.joined() if isinstance(response, PiecesResponse) else bytes(response.body)


def _split(split: TokenSplit) -> dict[str, int]:
    return {"text_tokens": split.text_tokens, "image_tokens": split.image_tokens}


class PiecesResponse(Response):
    """A body sent as the pieces it is made of, with its Content-Length: megabytes of an
    upstream's base64 go from its answer's buffer to the socket without being joined into a new
    body first (one 2 MB copy less per 1K image). `joined()` makes the one buffer for the rare
    reader that needs it (Idempotency-Key storage)."""

    def __init__(
        self,
        pieces: list[bytes | memoryview],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.pieces = [piece for piece in pieces if len(piece)]
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        length = str(sum(len(piece) for piece in self.pieces))
        self.init_headers({**(headers or {}), "content-length": length})

    def joined(self) -> bytes:
        return b"".join(self.pieces)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.pieces) - 1
        for index, piece in enumerate(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": index < last})
        if not self.pieces:
            await send({"type": "http.response.body", "body": b""})
        if self.background is not None:  # as Starlette's Response runs it
            await self.background()


def model_list(gateway: Gateway) -> dict[str, Any]:
    """GET /v1/models (and `imagegate models`): every card, and what an operator must know."""
    body: dict[str, Any] = {
        "object": "list",
        "data": model_cards(gateway.router, default_response_format=gateway.settings.default_response_format),
    }
    if notice := gateway.notice():
        body["notice"] = notice
    return body


def model_cards(router: Router, *, default_response_format: str | None = None) -> list[dict[str, Any]]:
    """GET /models: each model's card, followed by one card per alias of it."""
    return [
        model_card(router.model(name), router, name, default_response_format=default_response_format)
        for model in router.catalog
        for name in (model.id, *model.aliases)
    ]


def model_card(
    model: ModelEntry, router: Router, requested: str | None = None, *, default_response_format: str | None = None
) -> dict[str, Any]:
    """Everything a client needs to know about a model, straight from the catalog (with the
    operator's IMAGEGATE_DEFAULT_RESPONSE_FORMAT as response_format's default). Asked for by an
    alias (`requested`), the card carries that id and says which model it is an alias of."""
    configured = router.available_providers(model)
    names: dict[str, Any] = {"id": model.id, "aliases": model.aliases}
    if requested is not None and requested != model.id:
        names = {"id": requested, "alias_of": model.id}
    parameters = {name: spec.model_dump(exclude_none=True) for name, spec in model.parameters.items()}
    if default_response_format is not None and "response_format" in parameters:
        parameters["response_format"]["default"] = default_response_format
    return {
        **names,
        "object": "model",
        "created": 0,
        "owned_by": model.owned_by,
        "name": model.name,
        "description": model.description,
        "notes": model.notes,  # where the entry's facts come from, and which are unconfirmed
        "available": bool(configured),
        "modes": model.modes,
        "parameters": parameters,
        "resolution_tiers": model.resolution_tiers,
        "default_resolution": model.default_resolution,
        "aspect_ratios": model.supported_ratios(),
        "sizes": [s.model_dump() for s in model.sizes] if model.sizes is not None else None,
        "pixel_limits": model.pixel_limits.model_dump() if model.pixel_limits else None,
        "max_input_images": model.max_input_images,
        "input_formats": model.input_formats,
        "price": model.price.model_dump(),
        "providers": [
            {
                "id": provider_id,
                "configured": provider_id in configured,
                "upstream_model": model.providers[provider_id].upstream_model,
                "max_images_per_call": model.providers[provider_id].max_images_per_call,
                "price": model.binding_price(provider_id).model_dump(),
                "parameters": {
                    name: h.model_dump(exclude_none=True) for name, h in model.providers[provider_id].parameters.items()
                },
            }
            for provider_id in router.provider_order(model)
        ],
    }
