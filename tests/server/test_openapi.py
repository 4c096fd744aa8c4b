"""GET /openapi.json and /docs on a real gateway: the document is valid OpenAPI 3.1, lists every
route the app serves, carries the catalog's parameters, and its example request really works."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from PIL import Image
from starlette.routing import Mount, Route

from imagegate.catalog import load_builtin_catalog
from imagegate.server import create_app

from ..conftest import API_KEY, RunningGateway, make_settings
from ..fakes.gemini import FakeGemini

IMAGE_PARAMETERS = ("prompt", "n", "size", "aspect_ratio", "resolution", "response_format", "output_format", "seed")


def _document(gateway: RunningGateway) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/openapi.json")  # no API key: the document is public
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_document_is_valid_openapi_3_1_and_every_ref_resolves(gateway: RunningGateway) -> None:
    document = _document(gateway)
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    validate(document)  # openapi-spec-validator picks the 3.1 schema from the `openapi` field
    refs = _refs(document)
    assert refs and all(ref.startswith("#/") for ref in refs)
    for ref in refs:
        assert isinstance(_resolve(document, ref), dict), ref
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An imagegate API key.",
    }
    assert "/openai/v1" in document["info"]["description"]


def test_every_route_the_app_serves_is_documented(tmp_path: Path, gateway: RunningGateway) -> None:
    """Walks the app's own routes: a route added without an entry in server/openapi.py fails here."""
    app = create_app(make_settings(tmp_path))
    served: set[tuple[str, str]] = set()
    mirrored: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount) and route.path in ("/v1", "/openai/v1"):
            target = served if route.path == "/v1" else mirrored
            for sub in route.routes:
                assert isinstance(sub, Route)
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", sub.path)
                target |= {(path, m.lower()) for m in sub.methods or () if m != "HEAD"}
        elif isinstance(route, Route):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            served |= {("/-" + path, m.lower()) for m in route.methods or () if m != "HEAD"}
    assert served and mirrored == {(p, m) for p, m in served if not p.startswith("/-")}
    documented = {
        (path.removeprefix("/v1") if path.startswith("/v1/") else "/-" + path, method)
        for path, item in _document(gateway)["paths"].items()
        for method in item
    }
    assert documented == served
    assert {"/-/openapi.json", "/-/docs", "/-/health", "/-/metrics"} <= {p for p, _ in served}


def test_image_routes_carry_the_catalogs_parameters(gateway: RunningGateway) -> None:
    document = _document(gateway)
    schemas = document["components"]["schemas"]
    generation = document["paths"]["/v1/images/generations"]["post"]
    assert generation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerationRequest"
    }
    assert "get" in document["paths"]["/v1/models"]
    properties = schemas["GenerationRequest"]["properties"]
    assert set(IMAGE_PARAMETERS) <= set(properties)
    assert not {"image", "mask"} & set(properties)  # files belong to edits
    assert schemas["GenerationRequest"]["required"] == ["prompt"]

    catalog = load_builtin_catalog()
    gemini = catalog.get("gemini-3-pro-image-preview")
    assert gemini is not None
    ratios = properties["aspect_ratio"]["x-imagegate-models"]["gemini-3-pro-image-preview"]
    assert ratios["values"] == gemini.supported_ratios() and ratios["t2i"] == "supported"
    assert set(gemini.supported_ratios()) <= set(properties["aspect_ratio"]["examples"])
    tiers = properties["resolution"]["x-imagegate-models"]["gemini-3-pro-image-preview"]["values"]
    assert set(gemini.resolution_tiers) <= set(tiers) and "auto" in tiers
    output_formats = {v for m in catalog for v in m.parameters["output_format"].values or ()}
    assert set(properties["output_format"]["enum"]) == output_formats
    assert properties["model"]["enum"][0] == "gemini-3-pro-image-preview"
    for name in IMAGE_PARAMETERS:  # the catalog's description, word for word
        assert properties[name]["description"] == gemini.parameters[name].description
    compression = properties["output_compression"]
    assert (compression["type"], compression["minimum"], compression["maximum"]) == ("integer", 0, 100)
    assert isinstance(compression["minimum"], int)

    # The model card and the list answer fit their schemas.
    models = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}).json()
    Draft202012Validator({"$ref": "#/components/schemas/ModelList", "components": document["components"]}).validate(
        models
    )

    # Each provider's handling of the parameter, from the model's bindings.
    handled = properties["seed"]["x-imagegate-models"]["gemini-3-pro-image-preview"]["providers"]
    card = httpx.get(
        f"{gateway.url}/v1/models/gemini-3-pro-image-preview", headers={"authorization": f"Bearer {API_KEY}"}
    ).json()
    assert handled == {
        p["id"]: p["parameters"]["seed"]["handling"] for p in card["providers"] if "seed" in p["parameters"]
    }
    assert handled["gemini"] == "renamed" and handled["replicate"] == "not_available"

    # A model without seed says so, per mode (the catalog declares it not available there).
    lacking = [m.id for m in catalog if m.parameters["seed"].t2i == "not_available"]
    assert lacking
    for model_id in lacking:
        assert properties["seed"]["x-imagegate-models"][model_id]["t2i"] == "not_available"


def test_edits_take_multipart_files_and_json(gateway: RunningGateway) -> None:
    document = _document(gateway)
    content = document["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    edit = _resolve(document, content["multipart/form-data"]["schema"]["$ref"])
    assert edit["properties"]["image[]"]["type"] == "array"
    assert edit["properties"]["image[]"]["items"]["contentMediaType"] == "application/octet-stream"
    assert edit["properties"]["mask"]["contentMediaType"] == "application/octet-stream"
    assert "input_fidelity" in edit["properties"]
    fidelity = edit["properties"]["input_fidelity"]["x-imagegate-models"]
    assert fidelity["gpt-image-1"]["edit"] == "supported" and fidelity["gpt-image-1"]["t2i"] == "not_available"


def test_every_error_response_is_the_openai_error_shape(gateway: RunningGateway) -> None:
    document = _document(gateway)
    for path, item in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            statuses = [s for s in operation["responses"] if s[0] in "45"]
            assert statuses, (path, method)
            for status in statuses:
                media = operation["responses"][status]["content"]["application/json"]
                assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (path, method, status)
    generation = document["paths"]["/v1/images/generations"]["post"]["responses"]
    assert {"400", "401", "404", "413", "502", "503", "504"} <= set(generation)
    assert "unsupported_parameter" in generation["400"]["description"]


def test_the_schemas_example_request_succeeds_and_its_answer_fits_the_schema(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    document = _document(gateway)
    schemas = document["components"]["schemas"]
    example = schemas["GenerationRequest"]["examples"][0]
    Draft202012Validator(schemas["GenerationRequest"]).validate(example)
    response = httpx.post(
        f"{gateway.url}/v1/images/generations", json=example, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert len(fake_gemini.requests) == 1
    root = {"$ref": "#/components/schemas/ImagesResponse", "components": document["components"]}
    Draft202012Validator(root).validate(response.json())
    # An error answer fits the Error schema too (a value outside output_format's enum is a 400).
    bad = httpx.post(
        f"{gateway.url}/v1/images/generations",
        json={**example, "output_format": "bmp"},
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert bad.status_code == 400
    Draft202012Validator({"$ref": "#/components/schemas/Error", "components": document["components"]}).validate(
        bad.json()
    )


def test_docs_page_is_html_whose_assets_the_gateway_serves(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.url}/docs")  # no API key, like /openapi.json
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/v1/images/generations" in page and "aspect_ratio" in page and "16:9" in page
    assets = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert "/docs/static/docs.css" in assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset  # same origin, no CDN
        fetched = httpx.get(f"{gateway.url}{asset}")
        assert fetched.status_code == 200, asset
    assert "<script" not in page
    assert "Not available (text-to-image): " in page  # per-model availability, from x-imagegate-models


@pytest.mark.parametrize("missing", ["/docs/static/nothing.css", "/docs/static/../openapi.py"])
def test_docs_assets_serve_only_the_bundled_files(gateway: RunningGateway, missing: str) -> None:
    assert httpx.get(f"{gateway.url}{missing}").status_code == 404


def test_playground_off_turns_docs_off_and_keeps_the_document(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, playground=False
    )
    response = httpx.get(f"{gateway.url}/docs")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gateway.url}/openapi.json").json()["openapi"].startswith("3.1")


def test_playground_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from imagegate.config import Settings

    assert Settings().playground is True
    monkeypatch.setenv("IMAGEGATE_PLAYGROUND", "false")
    assert Settings().playground is False


def test_a_multipart_edit_built_from_the_schemas_field_names_succeeds(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    document = _document(gateway)
    content = document["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    fields = _resolve(document, content["multipart/form-data"]["schema"]["$ref"])["properties"]
    assert {"image[]", "mask", "prompt", "model"} <= set(fields)
    picture = io.BytesIO()
    Image.new("RGBA", (64, 64), (200, 30, 30, 255)).save(picture, "PNG")
    mask = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(mask, "PNG")
    response = httpx.post(
        f"{gateway.url}/v1/images/edits",
        data={"model": "gemini-3-pro-image-preview", "prompt": "Make it blue"},
        files=[
            ("image[]", ("in.png", picture.getvalue(), "image/png")),
            ("mask", ("m.png", mask.getvalue(), "image/png")),
        ],
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(fake_gemini.requests) == 1
    root = {"$ref": "#/components/schemas/ImagesResponse", "components": document["components"]}
    Draft202012Validator(root).validate(response.json())


def test_a_file_parameter_of_any_name_is_no_json_field() -> None:
    """An operator's catalog may declare a file under another name: it is no generation field (and
    no 500 for a type JSON Schema lacks)."""
    from imagegate.server.openapi import _request_schema

    spec = {"description": "A style reference image.", "t2i": "supported", "edit": "supported"}
    card = {
        "id": "m",
        "aliases": [],
        "available": True,
        "aspect_ratios": [],
        "resolution_tiers": [],
        "providers": [],
        "parameters": {
            "prompt": {**spec, "type": "string", "t2i": "required", "edit": "required"},
            "style_reference": {**spec, "type": "file"},
        },
    }
    schema = _request_schema([card], "t2i", multipart=False)
    assert set(schema["properties"]) == {"model", "prompt"}
    assert schema["required"] == ["prompt"]


# --- what lets a fuzzer (schemathesis, tests/server/test_openapi_fuzz.py) reach the core logic ----


def test_operation_ids_are_the_handlers_names_and_links_name_real_operations(gateway: RunningGateway) -> None:
    document = _document(gateway)
    operations = {
        op["operationId"]: (path, method) for path, item in document["paths"].items() for method, op in item.items()
    }
    assert len(operations) == sum(len(item) for item in document["paths"].values())  # unique
    assert operations["create_key"] == ("/v1/admin/keys", "post")
    assert operations["get_job"] == ("/v1/images/jobs/{job_id}", "get")
    paths = document["paths"]
    created = paths["/v1/admin/keys"]["post"]["responses"]["201"]["links"]
    accepted = paths["/v1/images/generations"]["post"]["responses"]["202"]["links"]
    assert paths["/v1/images/edits"]["post"]["responses"]["202"]["links"] == accepted
    for links, parameter in ((created, "key_id"), (accepted, "job_id")):
        assert links
        for link in links.values():
            path, method = operations[link["operationId"]]
            names = [p["name"] for p in paths[path][method]["parameters"] if p["in"] == "path"]
            assert link["parameters"] == {parameter: "$response.body#/id"} and names == [parameter]
    assert {link["operationId"] for link in created.values()} == {"get_key", "update_key", "delete_key"}


def test_a_key_id_from_the_create_link_works_on_the_linked_operations(gateway_factory: Any) -> None:
    admin = {"authorization": "Bearer sk-admin-doc"}
    gw = gateway_factory(admin_keys="sk-admin-doc")
    created = httpx.post(f"{gw.url}/v1/admin/keys", json={"name": "linked"}, headers=admin)
    assert created.status_code == 201
    key_id = created.json()["id"]  # $response.body#/id
    assert httpx.get(f"{gw.url}/v1/admin/keys/{key_id}", headers=admin).json()["name"] == "linked"
    assert httpx.delete(f"{gw.url}/v1/admin/keys/{key_id}", headers=admin).json()["deleted"] is True


def test_edits_require_an_image_and_the_json_example_really_edits(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    document = _document(gateway)
    schemas = document["components"]["schemas"]
    multipart, json_edit = schemas["EditRequest"], schemas["EditJsonRequest"]
    assert multipart["anyOf"] == [{"required": ["image[]"]}, {"required": ["image"]}]
    assert json_edit["anyOf"] == [{"required": ["image"]}, {"required": ["images"]}]
    validator = Draft202012Validator(json_edit)
    assert not validator.is_valid({"prompt": "no image"})
    assert not validator.is_valid({"prompt": "p", "images": []})
    assert validator.is_valid({"prompt": "p", "images": [{"image_url": {"url": "https://example.com/a.png"}}]})
    [example] = json_edit["examples"]
    validator.validate(example)
    response = httpx.post(
        f"{gateway.url}/v1/images/edits", json=example, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert len(fake_gemini.requests) == 1


@pytest.mark.parametrize(
    ("name", "accepted", "refused"),
    [
        ("prompt", ["a fox", " x "], ["", "   ", "\t\n"]),
        ("size", ["1024x1024", "1536 X 1024", "16:9", "3/2", "auto", "AUTO", "", " 512*512 "], ["big", "1024x", "0x5"]),
        ("aspect_ratio", ["16:9", " 4 / 3 "], ["wide", "16:", "0:1"]),
    ],
)
def test_string_patterns_agree_with_what_the_gateway_takes(
    gateway: RunningGateway, name: str, accepted: list[str], refused: list[str]
) -> None:
    """Each value the pattern admits is taken by the gateway (no 400 for it) and each it refuses is
    a 400 naming the field: the document says what the parser does."""
    field = _document(gateway)["components"]["schemas"]["GenerationRequest"]["properties"][name]
    validator = Draft202012Validator(field)
    for value in accepted:
        assert validator.is_valid(value), value
        body = {"prompt": "p", name: value}
        response = httpx.post(
            f"{gateway.url}/v1/images/generations",
            json=body,
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=60,
        )
        assert response.status_code == 200, (value, response.text)
    for value in refused:
        assert not validator.is_valid(value), value
        response = httpx.post(
            f"{gateway.url}/v1/images/generations",
            json={"prompt": "p", name: value},
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == name, (value, response.text)


def test_a_parameter_typed_differently_by_models_offers_each_type(gateway_factory: Any) -> None:
    """BFL's safety_tolerance is an integer 0 to 6, fal's (for Nano Banana Pro) a string "1".."6"."""
    gw = gateway_factory()
    field = _document(gw)["components"]["schemas"]["GenerationRequest"]["properties"]["safety_tolerance"]
    by_type = {branch["type"]: branch for branch in field["anyOf"]}
    assert by_type["integer"]["minimum"] == 0 and by_type["integer"]["maximum"] == 6
    assert by_type["string"]["enum"] == ["1", "2", "3", "4", "5", "6"]
    assert "minimum" not in by_type["string"] and field["description"]


def test_headers_streams_and_pages_are_described_as_served(gateway: RunningGateway) -> None:
    document = _document(gateway)
    paths = document["paths"]
    generation = paths["/v1/images/generations"]["post"]
    key = next(p for p in generation["parameters"] if p["name"] == "Idempotency-Key")["schema"]
    key_validator = Draft202012Validator(key)
    assert key_validator.is_valid("retry-1")
    assert not key_validator.is_valid("") and not key_validator.is_valid("x" * 256)
    # An event of the stream as schemathesis and OpenAPI 3.1 read it: {event, data}, not the whole body.
    event = generation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    jobs_event = paths["/v1/images/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert jobs_event["schema"] == event
    Draft202012Validator(event).validate({"event": "image_generation.completed", "data": '{"type": "x"}'})
    # An unknown model's page is an HTML 404 page: documented as HTML (and JSON with the pages off).
    page_404 = paths["/models/{model_id}"]["get"]["responses"]["404"]["content"]
    assert set(page_404) == {"text/html", "application/json"}
    response = httpx.get(f"{gateway.url}/models/no-such-model")
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    # The usage period: numbers, dates, or nothing; group_by from the groupings.
    usage = {p["name"]: p["schema"] for p in paths["/v1/usage"]["get"]["parameters"]}
    start = Draft202012Validator(usage["start"], format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert all(start.is_valid(v) for v in ("1796083200", "", "2026-12-01", "2026-12-01T00:00:00Z"))
    assert not start.is_valid("yesterday") and not start.is_valid("999999999999")
    group_by = Draft202012Validator(usage["group_by"])
    assert group_by.is_valid("key,model") and group_by.is_valid("") and not group_by.is_valid("colour")


def test_admin_bodies_are_described_as_the_api_takes_them(gateway: RunningGateway) -> None:
    schemas = _document(gateway)["components"]["schemas"]
    changes = Draft202012Validator({"$ref": "#/components/schemas/KeyChanges", "components": {"schemas": schemas}})
    assert changes.is_valid({"models": None, "budget": None, "expires_at": "2030-01-01T00:00:00Z"})
    assert not changes.is_valid({"name": None}) and not changes.is_valid({"admin": None})  # a 400 (admin_routes)
    assert not changes.is_valid({"name": " "})
    assert not changes.is_valid({"rate_limits": {"requests_per_minute": 2**63}})
    assert not changes.is_valid({"expires_at": 1e300})
    assert not changes.is_valid({"models": ["no-such-model"]})
    assert changes.is_valid({"models": ["nano-banana-pro"]})  # the catalog's ids and aliases


def test_the_docs_page_shows_each_type_of_a_field_models_type_differently(gateway: RunningGateway) -> None:
    page = httpx.get(f"{gateway.url}/docs").text
    row = re.search(r"<tr><td><code>safety_tolerance</code>.*?</tr>", page, flags=re.S)
    assert row is not None
    assert "<td>string or integer</td>" in row.group(0) or "<td>integer or string</td>" in row.group(0)
    assert "Values: 1, 2, 3, 4, 5, 6" in row.group(0) and "minimum 0 maximum 6" in row.group(0)


def test_the_model_enum_is_the_models_this_gateway_serves(gateway: RunningGateway, gateway_factory: Any) -> None:
    """Only Gemini configured: the request bodies offer its models (a schema-driven client or fuzzer
    then never picks one whose provider is missing, a 503); with nothing configured, every model."""
    cards = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}).json()["data"]
    served = [card["id"] for card in cards if card["available"]]
    assert served and len(served) < len(cards)  # the catalog has models of other providers
    schemas = _document(gateway)["components"]["schemas"]
    for name in ("GenerationRequest", "EditRequest", "EditJsonRequest"):
        assert schemas[name]["properties"]["model"]["enum"] == served, name
    bare = gateway_factory()
    bare_schemas = _document(bare)["components"]["schemas"]
    assert bare_schemas["GenerationRequest"]["properties"]["model"]["enum"] == [card["id"] for card in cards]
