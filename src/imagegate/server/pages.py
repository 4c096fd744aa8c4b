"""The model pages' view data: a catalog entry (and the router's provider order) -> plain dicts
the templates show. Pure, no I/O: the route only adds the base URL and renders.

The card `GET /v1/models/{id}` returns (render.model_card) is the source; this module arranges it
for people: parameters in the spec's groups with Required / Supported / Not available per mode,
one size table per resolution tier (every size as `WxH`), each provider's handling of each
parameter (params.declared_fate, the one rule the request planner uses too), prices per tier, and
code examples filled in with the model's id and a size from its table.
"""

from __future__ import annotations

import json
from typing import Any, get_args
from urllib.parse import quote

from ..catalog import Handling, ModelEntry
from ..normalize import resolve_layout
from ..params import WirePlan, declared_fate
from ..router import Router
from .render import model_card

MODE_LABELS = {"t2i": "T2I", "edit": "Edit"}
AVAILABILITY_LABELS = {"required": "Required", "supported": "Supported", "not_available": "Not available"}
# The spec's groups, in its order; a parameter of none of them goes under "Additional Parameters".
PARAMETER_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Core Parameters", ("prompt", "seed")),
    ("Size & Layout", ("size", "aspect_ratio", "resolution")),
    ("Media Inputs", ("image", "mask")),
    ("Output & Format", ("response_format", "output_format", "output_compression", "n", "stream", "partial_images")),
    ("OpenAI Standard Fields", ("quality", "style", "background", "moderation", "input_fidelity")),
    ("End User", ("user", "safety_identifier")),
)
ADDITIONAL = "Additional Parameters"

# How matching works and the normalization behaviours: the one place this text lives (the rules
# themselves are normalize.py's and params.py's; the spec words them this way).
MATCHING = (
    (
        "Priority",
        "size (WxH) wins over aspect_ratio + resolution, which win over aspect_ratio, then resolution, "
        "then the model's default. size as W:H is the same as aspect_ratio.",
    ),
    ("Shape matching", "the closest supported ratio is picked (by |ln(r1/r2)|; ties go to the larger)."),
    (
        "Scale matching",
        "tiers are K tiers (1K, 2K, 4K) or megapixel tiers (0.25, 1); a tier that is not available "
        "becomes the nearest one.",
    ),
    (
        "Dimension clamping",
        "where a model takes any size within pixel limits, dimensions are clamped to fit, keeping the aspect ratio.",
    ),
    ("Edits", "with no shape given, an edit keeps the shape of its first image; text-to-image uses the default ratio."),
    ("Adjustments", "every value that ends up different from what was asked is listed in the answer's adjustments."),
)
HANDLING_TEXT: dict[str, tuple[str, str]] = {
    "passthrough": ("passthrough", "sent as-is to the provider"),
    "renamed": ("renamed", "same value, under the field name the provider expects"),
    "converted": ("converted", "transformed to the provider's native format"),
    "emulated": ("emulated", "done by the gateway, even where the provider has no such thing"),
    "not_available": (
        "not available",
        "the provider cannot honour it: a 400 naming it, or served without it and reported in adjustments",
    ),
    "gateway": ("gateway", "the gateway's own field, used before any provider call"),
    "model_lacks": ("not available", "the model lacks it"),
}


def page_path(model_id: str) -> str:
    return "/models/" + quote(model_id, safe="/")


def model_index(router: Router) -> list[dict[str, Any]]:
    """GET /models: one row per catalog model."""
    return [
        {
            "id": model.id,
            "name": model.name,
            "description": model.description,
            "modes": [MODE_LABELS[m] for m in model.modes],
            "aliases": list(model.aliases),
            "href": page_path(model.id),
            "available": bool(router.available_providers(model)),
        }
        for model in router.catalog
    ]


def model_page(
    model: ModelEntry, router: Router, requested: str, base_url: str, *, default_response_format: str | None = None
) -> dict[str, Any]:
    """Everything the model page shows, for `requested` (the id or an alias of `model`), with the
    operator's IMAGEGATE_DEFAULT_RESPONSE_FORMAT as response_format's default (as GET /v1/models says)."""
    card = model_card(model, router, default_response_format=default_response_format)
    return {
        "id": model.id,
        "requested": requested,
        "alias_of": model.id if requested != model.id else None,
        "name": model.name,
        "description": model.description,
        "notes": model.notes,
        "owned_by": model.owned_by,
        "available": card["available"],
        "aliases": list(model.aliases),
        "modes": [{"id": m, "label": MODE_LABELS[m]} for m in model.modes],
        "max_input_images": model.max_input_images,
        "input_formats": model.input_formats,
        "parameter_groups": parameter_groups(model, card["parameters"]),
        "size_tiers": size_tiers(model),
        "pixel_limits": card["pixel_limits"],
        "matching": MATCHING,
        "handlings": [HANDLING_TEXT[h] for h in (*get_args(Handling), "gateway")],
        "providers": provider_rows(model, router),
        "examples": code_examples(model, base_url),
        "base_url": base_url,
    }


def parameter_groups(model: ModelEntry, card_parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter reference: rows grouped as the spec groups them, availability per mode."""
    grouped = {name for _, names in PARAMETER_GROUPS for name in names}
    groups = [(title, [n for n in names if n in model.parameters]) for title, names in PARAMETER_GROUPS]
    groups.append((ADDITIONAL, [n for n in model.parameters if n not in grouped]))
    return [
        {"title": title, "rows": [parameter_row(model, n, card_parameters[n].get("default")) for n in names]}
        for title, names in groups
        if names
    ]


def parameter_row(model: ModelEntry, name: str, default: Any) -> dict[str, Any]:
    spec = model.parameters[name]
    limits = []
    if spec.minimum is not None or spec.maximum is not None:
        limits.append(
            f"{_number(spec.minimum) if spec.minimum is not None else ''}"
            f"–{_number(spec.maximum) if spec.maximum is not None else ''}"
        )
    return {
        "name": name,
        "type": spec.type,
        "description": spec.description,
        "provider": spec.provider,
        "choices": spec.values or [],
        "default": None if default is None else json.dumps(default),
        "range": limits[0] if limits else None,
        "modes": {mode: AVAILABILITY_LABELS[spec.availability(mode)] for mode in ("t2i", "edit")},
    }


def size_tiers(model: ModelEntry) -> list[dict[str, Any]]:
    """One table per resolution tier: each size as WxH and the ratio + tier that gives it. A model
    with pixel limits instead of a table shows what each of its ratios resolves to at each tier."""
    tiers = []
    for tier in model.resolution_tiers:
        if model.sizes is not None:
            rows = [(s.aspect_ratio, s.width, s.height) for s in model.sizes if s.resolution == tier]
        else:
            rows = []
            for ratio in model.supported_ratios():
                layout = resolve_layout(model, aspect_ratio=ratio, resolution=tier)
                rows.append((ratio, layout.width, layout.height))
        tiers.append(
            {
                "tier": tier,
                "default": tier == model.default_resolution,
                "rows": [
                    {"size": f"{w}x{h}", "width": w, "height": h, "aspect_ratio": ratio, "resolution": tier}
                    for ratio, w, h in rows
                ],
            }
        )
    return tiers


def playground_models(router: Router) -> dict[str, dict[str, Any]]:
    """For the playground: model id (and each alias) -> its name, whether it is served here, its
    default ratio and tier, and every (aspect_ratio, resolution, width, height) its table gives (the
    rows of its page's size tables; a model with pixel limits has none in its card)."""
    shown: dict[str, dict[str, Any]] = {}
    for model in router.catalog:
        entry = {
            "id": model.id,
            "name": model.name,
            "available": bool(router.available_providers(model)),
            "default_aspect_ratio": model.default_aspect_ratio,
            "default_resolution": model.default_resolution,
            "sizes": [
                {k: row[k] for k in ("aspect_ratio", "resolution", "width", "height")}
                for tier in size_tiers(model)
                for row in tier["rows"]
            ],
        }
        for name in (model.id, *model.aliases):
            shown[name] = entry
    return shown


def provider_rows(model: ModelEntry, router: Router) -> list[dict[str, Any]]:
    """Per provider, in routing order: whether it is configured here, its upstream ids, its price
    per tier and how it handles each of the model's parameters."""
    configured = router.available_providers(model)
    rows = []
    for provider_id in router.provider_order(model):
        binding = model.providers[provider_id]
        price = model.binding_price(provider_id)
        plan = WirePlan.from_binding(binding)
        rows.append(
            {
                "id": provider_id,
                "configured": provider_id in configured,
                "upstream_model": binding.upstream_model,
                "upstream_model_edit": binding.upstream_model_edit,
                "max_images_per_call": binding.max_images_per_call,
                "native_output_formats": binding.native_output_formats,
                "currency": price.currency,
                "prices": [
                    {"tier": tier, "amount": price.for_resolution(tier), "text": money(price.for_resolution(tier))}
                    for tier in model.resolution_tiers
                ],
                "per_input_image": money(price.per_input_image) if price.per_input_image else None,
                "extras": [{"option": k, "text": money(v)} for k, v in price.extras.items()],
                "by_quality_size": [
                    {"quality": q, "sizes": [{"size": s, "text": money(a)} for s, a in table.items()]}
                    for q, table in price.by_quality_size.items()
                ],
                "estimated": price.estimated,
                "source": price.source,
                "handling": [handling_row(model, plan, name) for name in model.parameters],
            }
        )
    return rows


def handling_row(model: ModelEntry, plan: WirePlan, name: str) -> dict[str, Any]:
    """How one provider treats one parameter: the binding's handling, else the planner's rule."""
    spec = model.parameters[name]
    declared = plan.handlings.get(name)
    if all(spec.availability(mode) == "not_available" for mode in model.modes) and declared is None:
        key = "model_lacks"
        how = "served without it; adjustments says so" if spec.if_unavailable == "not_applied" else None
        return {"name": name, "handling": HANDLING_TEXT[key][0], "key": key, "to": None, "how": how}
    fate = declared_fate(plan, name)
    return {
        "name": name,
        "handling": HANDLING_TEXT[fate.fate][0],
        "key": fate.fate,
        "to": " + ".join(fate.paths) if fate.fate not in ("emulated", "not_available", "gateway") else None,
        "how": declared.how if declared is not None else None,
    }


def example_size(model: ModelEntry) -> str:
    """A valid size for the examples: the model's default ratio at its default tier."""
    layout = resolve_layout(model)
    return f"{layout.width}x{layout.height}"


def code_examples(model: ModelEntry, base_url: str) -> list[dict[str, str]]:
    """curl, Python openai and Node openai, for text-to-image and (where the model edits) edits."""
    api = base_url.rstrip("/") + "/v1"
    model_js, size = json.dumps(model.id), example_size(model)
    body = json.dumps({"model": model.id, "prompt": "A lighthouse on a cliff at dawn", "size": size}, indent=2)
    examples = [
        {
            "id": "curl-generate",
            "title": "curl: text to image",
            "code": f"curl -X POST {api}/images/generations \\\n"
            '  -H "Authorization: Bearer $IMAGEGATE_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  -d '{_shell_single(body)}'",
        },
        {
            "id": "python-generate",
            "title": "Python (openai): text to image",
            "code": "import os\n\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url={json.dumps(api)}, api_key=os.environ["IMAGEGATE_API_KEY"])\n'
            f"result = client.images.generate(\n    model={model_js},\n"
            f'    prompt="A lighthouse on a cliff at dawn",\n    size={json.dumps(size)},\n)\n'
            "print(result.data[0].url)\n",
        },
        {
            "id": "node-generate",
            "title": "Node (openai): text to image",
            "code": 'import OpenAI from "openai";\n\n'
            f"const client = new OpenAI({{ baseURL: {json.dumps(api)}, apiKey: process.env.IMAGEGATE_API_KEY }});\n"
            f"const result = await client.images.generate({{\n  model: {model_js},\n"
            f'  prompt: "A lighthouse on a cliff at dawn",\n  size: {json.dumps(size)},\n}});\n'
            "console.log(result.data[0].url);\n",
        },
    ]
    if "edit" in model.modes:
        examples += [
            {
                "id": "curl-edit",
                "title": "curl: image edit",
                "code": f"curl -X POST {api}/images/edits \\\n"
                '  -H "Authorization: Bearer $IMAGEGATE_API_KEY" \\\n'
                f"  -F 'model={_shell_single(model.id)}' \\\n"
                '  -F "prompt=Make it a watercolor" \\\n'
                '  -F "image[]=@input.png"',
            },
            {
                "id": "python-edit",
                "title": "Python (openai): image edit",
                "code": f"result = client.images.edit(\n    model={model_js},\n"
                '    image=[open("input.png", "rb")],\n    prompt="Make it a watercolor",\n)\n'
                "print(result.data[0].url)\n",
            },
            {
                "id": "node-edit",
                "title": "Node (openai): image edit",
                "code": 'import fs from "node:fs";\n\n'
                f"const edited = await client.images.edit({{\n  model: {model_js},\n"
                '  image: fs.createReadStream("input.png"),\n  prompt: "Make it a watercolor",\n});\n'
                "console.log(edited.data[0].url);\n",
            },
        ]
    return examples


def money(amount: float) -> str:
    """0.134 -> '0.134', 0.24 -> '0.24': as many decimals as the price has, at most six."""
    return f"{amount:.6f}".rstrip("0").rstrip(".") or "0"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shell_single(text: str) -> str:
    """`text` inside a single-quoted shell word."""
    return text.replace("'", "'\\''")
