"""The local provider's own conversions: pass-through values typed for the pipeline, and the
checkpoint's safety checker turned into the gateway's content-policy error."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

import imagegate.providers.local as local_provider
from imagegate.catalog import ProviderBinding
from imagegate.engine.describe import read_checkpoint
from imagegate.engine.pipelines import JobOutput
from imagegate.errors import ContentPolicyViolation, InvalidRequest
from imagegate.normalize import Layout
from imagegate.providers.base import ProviderRequest
from imagegate.providers.local import LocalProvider, _as_type, encode_output


@pytest.mark.parametrize(
    ("value", "wanted", "expected"),
    [
        ("0.5", float, 0.5),
        (1, float, 1.0),
        ("2", int, 2),
        ("2.0", int, 2),
        (3, int, 3),
        ("true", bool, True),
        ("off", bool, False),
        (False, bool, False),
        (7, str, "7"),
        ("x", str, "x"),
    ],
)
def test_form_text_becomes_the_type_the_pipeline_takes(value: Any, wanted: type, expected: Any) -> None:
    converted = _as_type("arg", value, wanted)
    assert converted == expected and type(converted) is wanted


@pytest.mark.parametrize(
    ("value", "wanted"),
    [("lots", float), ("2.5", int), (True, int), ("nan", float), ("maybe", bool), (True, float), (False, str)],
)
def test_values_of_the_wrong_kind_are_400s_naming_the_argument(value: Any, wanted: type) -> None:
    with pytest.raises(InvalidRequest) as info:
        _as_type("arg", value, wanted)
    assert info.value.param == "arg"


def _request(output_format: str | None = None) -> ProviderRequest:
    return ProviderRequest(
        mode="t2i",
        prompt="x",
        layout=Layout("1:1", "1K", 8, 8),
        binding=ProviderBinding(upstream_model="/models/x"),
        output_format=output_format,
    )


def test_images_the_safety_checker_flagged_are_a_content_policy_error() -> None:
    with pytest.raises(ContentPolicyViolation):
        encode_output(JobOutput([Image.new("RGB", (8, 8))], flagged=True), _request())


def test_images_are_encoded_in_the_native_format_asked_for() -> None:
    result = encode_output(JobOutput([Image.new("RGB", (8, 8))] * 2), _request("webp"))
    assert [image.mime_type for image in result.images] == ["image/webp", "image/webp"]
    assert result.images[0].data[8:12] == b"WEBP"
    assert encode_output(JobOutput([Image.new("RGB", (8, 8))]), _request()).images[0].mime_type == "image/png"


async def test_the_provider_loads_the_checkpoint_the_gateway_already_read(
    tiny_checkpoints: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub model's configs are fetched once per start, not again when its weights load."""
    source = str(tiny_checkpoints())
    checkpoint = read_checkpoint(source)

    def read_again(source: str) -> None:
        raise AssertionError(f"{source} was read a second time")

    monkeypatch.setattr(local_provider, "read_checkpoint", read_again)
    provider = LocalProvider([source], checkpoints={source: checkpoint})
    try:
        await provider.start()
        assert provider.engines[source].model.checkpoint is checkpoint
    finally:
        await provider.aclose()
