"""Unit tests of parameter checking (params.py) against the catalog: OpenAI's standard fields,
strict mode, text prompts; and the pure helpers behind result URLs (server/public_url.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from imagegate.catalog import ModelEntry, load_builtin_catalog, parse_entries
from imagegate.errors import InvalidRequest, UnsupportedParameter
from imagegate.params import GATEWAY_PARAMS, normalize_params, refused_everywhere
from imagegate.providers import ProviderResult, TokenSplit
from imagegate.server.public_url import forwarded_pairs, is_trusted, public_base_url, valid_host

CATALOG = load_builtin_catalog()
STANDARD = ("quality", "style", "background", "moderation", "input_fidelity", "partial_images")


def model(model_id: str) -> ModelEntry:
    entry = CATALOG.get(model_id)
    assert entry is not None
    return entry


PRO = model("gemini-3-pro-image-preview")
GPT = model("gpt-image-1")


def config_model(parameters: dict[str, Any] | None = None, binding: dict[str, Any] | None = None) -> ModelEntry:
    """A model as a config file adds it, with the built-in default parameters."""
    from imagegate.catalog import builtin_data

    raw = {
        "id": "custom",
        "name": "Custom",
        "modes": ["t2i"],
        "resolution_tiers": ["1K"],
        "default_resolution": "1K",
        "sizes": [{"aspect_ratio": "1:1", "resolution": "1K", "width": 1024, "height": 1024}],
        "price": {"per_image": 0.01},
        "parameters": parameters or {},
        "providers": {"openai": {"upstream_model": "u", "parameters": binding or {}}},
    }
    return parse_entries({"models": [raw]}, builtin_data()["default_parameters"])[0]


@pytest.mark.parametrize("entry", [*CATALOG, config_model()], ids=lambda m: m.id)
def test_every_model_knows_openais_standard_fields(entry: ModelEntry) -> None:
    for name in STANDARD:
        assert entry.parameters[name].if_unavailable == "not_applied", name
    assert set(entry.parameters["quality"].values or []) <= {"auto", "low", "medium", "high", "hd", "standard"}
    assert "safety_identifier" in entry.parameters and "safety_identifier" in GATEWAY_PARAMS
    assert entry.parameters["partial_images"].maximum == 3


def test_a_models_own_spec_of_a_standard_field_stays_lenient() -> None:
    """gpt-image-1 declares its own quality values; it is still OpenAI's field."""
    assert GPT.parameters["quality"].values == ["low", "medium", "high", "auto"]
    assert GPT.parameters["quality"].if_unavailable == "not_applied"
    assert GPT.parameters["seed"].if_unavailable is None  # not a standard field: still refused


@pytest.mark.parametrize(
    "name,value",
    [
        ("quality", "hd"),
        ("style", "vivid"),
        ("background", "opaque"),
        ("moderation", "low"),
        ("input_fidelity", "high"),
    ],
)
def test_a_standard_field_the_model_lacks_is_not_applied(name: str, value: Any) -> None:
    params = normalize_params({"prompt": "p", name: value}, model=PRO, mode="t2i")
    assert name not in params.values and name not in params.options and name not in params.extra
    assert [(a.param, a.applied) for a in params.ignored] == [(name, f"not applied (model {PRO.id} lacks it)")]
    with pytest.raises(UnsupportedParameter) as excinfo:
        normalize_params({"prompt": "p", name: value}, model=PRO, mode="t2i", strict=True)
    assert excinfo.value.param == name


def test_form_field_text_of_a_standard_field_is_typed() -> None:
    """Multipart edits send text: 'true' and '2' are typed before they are judged."""
    params = normalize_params(
        {"prompt": "p", "stream": "true", "partial_images": "2", "quality": "high"}, model=PRO, mode="edit"
    )
    assert {a.param: a.requested for a in params.ignored} == {"quality": "high"}
    assert (params.values["stream"], params.values["partial_images"]) == (True, 2)


def test_stream_and_partial_images_are_the_gateways_own() -> None:
    """Every model streams (the gateway does it); neither field is ever sent upstream."""
    for entry in CATALOG:
        params = normalize_params({"prompt": "p", "stream": True, "partial_images": 3}, model=entry, mode="t2i")
        assert params.values["stream"] is True and params.values["partial_images"] == 3
        assert "stream" not in params.options and "partial_images" not in params.options
    assert {"stream", "partial_images"} <= GATEWAY_PARAMS


@pytest.mark.parametrize(
    "name,value",
    [
        ("quality", "ultra"),
        ("style", 3),
        ("partial_images", 5),
        ("partial_images", -1),
        ("stream", "sometimes"),
        ("background", ["auto"]),
    ],
)
def test_a_standard_field_of_the_wrong_type_or_value_is_400(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        normalize_params({"prompt": "p", name: value}, model=PRO, mode="t2i")
    assert excinfo.value.param == name and not isinstance(excinfo.value, UnsupportedParameter)


def test_a_standard_field_the_model_has_is_an_option() -> None:
    params = normalize_params({"prompt": "p", "quality": "HIGH", "background": "transparent"}, model=GPT, mode="t2i")
    assert params.options == {"quality": "high", "background": "transparent"}
    assert params.ignored == []


def test_non_standard_unavailable_parameters_are_still_refused() -> None:
    with pytest.raises(UnsupportedParameter):
        normalize_params({"prompt": "p", "seed": 3}, model=GPT, mode="t2i")


def test_refused_everywhere_spares_standard_fields_unless_strict() -> None:
    entry = config_model(
        parameters={
            "quality": {"type": "string", "description": "q", "t2i": "supported", "edit": "supported"},
            "steps": {"type": "integer", "description": "s", "t2i": "supported", "edit": "supported"},
        },
        binding={"quality": {"handling": "not_available"}, "steps": {"handling": "not_available"}},
    )
    assert entry.parameters["quality"].if_unavailable == "not_applied"  # inherited from the default
    params = normalize_params({"prompt": "p", "quality": "low", "steps": 3}, model=entry, mode="t2i")
    bindings = list(entry.providers.values())
    assert refused_everywhere(params, entry, bindings, strict=False) == {"steps"}
    assert refused_everywhere(params, entry, bindings, strict=True) == {"quality", "steps"}


@pytest.mark.parametrize("prompt", [12, 0, 1.5, True, False, ["a"], {"text": "a"}])
def test_a_prompt_that_is_not_a_string_is_refused(prompt: Any) -> None:
    with pytest.raises(InvalidRequest, match="must be a string") as excinfo:
        normalize_params({"prompt": prompt}, model=PRO, mode="t2i")
    assert excinfo.value.param == "prompt"


@pytest.mark.parametrize("prompt", ["", " ", "\n\t "])
def test_an_empty_prompt_must_not_be_empty(prompt: str) -> None:
    with pytest.raises(InvalidRequest, match="must not be empty") as excinfo:
        normalize_params({"prompt": prompt}, model=PRO, mode="t2i")
    assert excinfo.value.param == "prompt"


def test_other_strings_still_take_numbers() -> None:
    """safety_tolerance's values are digits; a JSON number for one is what clients send."""
    params = normalize_params({"prompt": "p", "safety_tolerance": 4}, model=PRO, mode="t2i")
    assert params.values["safety_tolerance"] == "4"


def test_token_splits_without_upstream_details() -> None:
    bare = ProviderResult(images=[], input_tokens=20, output_tokens=1290)
    assert bare.input_split() == TokenSplit(text_tokens=20, image_tokens=0)
    assert bare.output_split() == TokenSplit(text_tokens=0, image_tokens=1290)
    given = ProviderResult(images=[], input_tokens=20, input_details=TokenSplit(5, 15))
    assert given.input_split() + bare.input_split() == TokenSplit(25, 15)


# --- result URL helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "images.example.com",
        "a-b.example:443",
        "127.0.0.1:8000",
        "[::1]",
        "[2001:db8::1]:8443",
        "xn--bcher-kva.example",
    ],
)
def test_valid_hosts(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "evil/x",
        "a b",
        "exämple.com",
        "host:0",
        "host:65536",
        "[::g]",
        "::1",
        "host:",
        "user@host",
        "-a.com",
        "a..b",
        "a" * 64 + ".com",
        "host:80:80",
        'x"y',
        "host\r\nx: y",
    ],
)
def test_invalid_hosts(host: str) -> None:
    assert not valid_host(host)


def test_forwarded_takes_the_last_element_and_unquotes() -> None:
    header = 'for=1.2.3.4;host=a.example, for="[::1]:5";Host="b.example:8443";PROTO=https'
    assert forwarded_pairs(header) == {"for": "[::1]:5", "host": "b.example:8443", "proto": "https"}
    assert forwarded_pairs("") == {}


def test_trust_is_by_the_direct_peer() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]
    assert is_trusted("10.1.2.3", nets) and is_trusted("::ffff:127.0.0.1", nets)
    assert not is_trusted("192.168.1.1", nets) and not is_trusted(None, nets) and not is_trusted("x", nets)
    headers = {"host": "10.0.0.5:8000", "x-forwarded-host": "a.example, img.example", "x-forwarded-proto": "https"}
    kw: dict[str, Any] = {"scheme": "http", "trusted": nets, "fallback": "http://127.0.0.1:8000"}
    assert public_base_url(headers, peer="10.9.9.9", **kw) == "https://img.example"
    assert public_base_url(headers, peer="192.168.1.1", **kw) == "http://10.0.0.5:8000"
    assert public_base_url({**headers, "x-forwarded-proto": "javascript"}, peer="10.9.9.9", **kw) == kw["fallback"]
    assert public_base_url({}, peer=None, **kw) == kw["fallback"]
