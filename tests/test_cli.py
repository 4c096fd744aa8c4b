"""The `imagegate` command line: generate/edit in-process and against a server, models, keys, serve."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from openai import OpenAI
from PIL import Image

from imagegate.cli import cli
from imagegate.config import FileConfig, Settings
from imagegate.db import Database
from imagegate.gateway import build_catalog
from imagegate.keys import KeyStore
from imagegate.usage import UsageLog, UsageRecord

from .conftest import API_KEY, RunningGateway
from .fakes.gemini import FakeGemini, GeminiError, thought_color
from .fakes.images import color_for, detect_mime, image_size, pixel_at, solid_png

MODEL = "gemini-3-pro-image-preview"


# --- helpers -----------------------------------------------------------------------------


def make_runner() -> CliRunner:
    """stdout and stderr kept apart, whatever the installed click (8.2+ separates by default)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def invoke(*args: str, catch_exceptions: bool = False) -> Result:
    return make_runner().invoke(cli, list(args), catch_exceptions=catch_exceptions)


def assert_clean_failure(result: Result) -> None:
    """Exit 1 through the CLI's own error path (a message), not an uncaught exception/traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error" in result.stderr


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def open_image(path: Path) -> tuple[str, tuple[int, int]]:
    with Image.open(path) as img:
        img.load()
        return str(img.format), img.size


def flat(text: str) -> str:
    """Rich may wrap long lines; compare on whitespace-collapsed text."""
    return " ".join(text.split())


@pytest.fixture
def with_gemini(fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> FakeGemini:
    """In-process CLI runs see the fake Gemini through the environment, as a user would set it."""
    monkeypatch.setenv("GEMINI_API_KEY", fake_gemini.api_key)
    monkeypatch.setenv("GEMINI_BASE_URL", fake_gemini.base_url)
    return fake_gemini


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables use COLUMNS; keep model ids and key ids on one line."""
    monkeypatch.setenv("COLUMNS", "250")


def upstream_json(fake: FakeGemini, index: int = -1) -> dict[str, Any]:
    body = fake.requests[index].json
    assert isinstance(body, dict)
    return body


def inline_images(body: dict[str, Any]) -> list[bytes]:
    images = []
    for content in body["contents"]:
        for part in content["parts"]:
            blob = part.get("inlineData") or part.get("inline_data")
            if blob:
                images.append(base64.b64decode(blob["data"]))
    return images


def prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(part["text"] for content in body["contents"] for part in content["parts"] if "text" in part)


# --- generate, in-process ----------------------------------------------------------------


def test_generate_writes_png_and_prints_path(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    result = ok("generate", "a cat", "-o", str(out))

    assert result.stdout.strip().splitlines() == [str(out)]
    assert open_image(out) == ("PNG", (1024, 1024))
    assert pixel_at(out.read_bytes())[:3] == color_for("a cat")
    assert len(with_gemini.requests) == 1
    assert "a cat" in prompt_text(upstream_json(with_gemini))
    assert with_gemini.requests[0].model == "gemini-3-pro-image"  # the gemini binding's upstream id
    # The summary goes to stderr, not into the list of paths on stdout.
    assert MODEL in flat(result.stderr) and "gemini" in result.stderr
    assert "1024x1024" in result.stderr


def test_generate_size_is_adjusted_and_reported(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "wide.png"
    result = ok("generate", "a wide field", "--size", "1920x1080", "-o", str(out))

    assert open_image(out) == ("PNG", (1365, 768))
    assert upstream_json(with_gemini)["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "1K"}
    stderr = flat(result.stderr)
    assert "adjusted" in stderr and "1920x1080" in stderr
    assert "1365x768" in stderr
    assert result.stdout.strip().splitlines() == [str(out)]  # the summary stays off stdout


def test_generate_aspect_ratio_and_resolution(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "big.png"
    ok("generate", "mountains", "--aspect-ratio", "16:9", "--resolution", "2K", "-o", str(out))

    assert upstream_json(with_gemini)["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert open_image(out) == ("PNG", (2731, 1536))


def test_generate_n_writes_numbered_files(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    result = ok("generate", "three birds", "--n", "3", "-o", str(out))

    expected = [tmp_path / f"out-{i}.png" for i in (1, 2, 3)]
    assert result.stdout.strip().splitlines() == [str(p) for p in expected]
    for path in expected:
        assert open_image(path) == ("PNG", (1024, 1024))
    assert not out.exists()
    assert "3 image(s)" in result.stderr


def test_generate_seed_reaches_generation_config(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "seeded.png"
    ok("generate", "seeded", "--seed", "7", "-o", str(out))

    assert upstream_json(with_gemini)["generationConfig"]["seed"] == 7
    assert pixel_at(out.read_bytes())[:3] == color_for("seeded7")


def test_generate_output_format_webp(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "out.webp"
    ok("generate", "a webp", "--output-format", "webp", "-o", str(out))

    assert detect_mime(out.read_bytes()) == "image/webp"
    assert open_image(out) == ("WEBP", (1024, 1024))


def test_generate_without_output_uses_default_name_and_format_extension(
    with_gemini: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = ok("generate", "default name", "--output-format", "webp")

    assert result.stdout.strip() == "imagegate-1.webp"
    assert detect_mime((tmp_path / "imagegate-1.webp").read_bytes()) == "image/webp"


def test_generate_output_suffix_selects_jpeg(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    ok("generate", "a jpeg", "-o", str(out))

    data = out.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert open_image(out) == ("JPEG", (1024, 1024))


def test_generate_param_enables_web_search(with_gemini: FakeGemini, tmp_path: Path) -> None:
    ok("generate", "today's weather", "--param", "enable_web_search=true", "-o", str(tmp_path / "w.png"))

    tools = upstream_json(with_gemini).get("tools")
    assert tools == [{"google_search": {}}]


def test_generate_param_false_sends_no_tools(with_gemini: FakeGemini, tmp_path: Path) -> None:
    ok("generate", "no search", "--param", "enable_web_search=false", "-o", str(tmp_path / "n.png"))
    assert "tools" not in upstream_json(with_gemini)


def test_generate_without_param_sends_no_tools(with_gemini: FakeGemini, tmp_path: Path) -> None:
    ok("generate", "plain", "-o", str(tmp_path / "p.png"))
    assert "tools" not in upstream_json(with_gemini)


# --- edit, in-process --------------------------------------------------------------------


def test_edit_sends_both_images(with_gemini: FakeGemini, tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(solid_png(64, 64, (255, 0, 0)))
    b.write_bytes(solid_png(32, 32, (0, 0, 255)))
    out = tmp_path / "edited.png"

    result = ok("edit", str(a), str(b), "--prompt", "combine them", "-o", str(out))

    assert result.stdout.strip() == str(out)
    body = upstream_json(with_gemini)
    images = inline_images(body)
    assert len(images) == 2
    assert [image_size(img) for img in images] == [(64, 64), (32, 32)]
    assert "combine them" in prompt_text(body)
    assert open_image(out)[0] == "PNG"


def test_edit_with_mask(with_gemini: FakeGemini, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    src.write_bytes(solid_png(64, 64, (10, 200, 10)))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 32))  # top-left quarter may change
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    mask_path = tmp_path / "mask.png"
    mask_path.write_bytes(buf.getvalue())
    out = tmp_path / "masked.png"

    ok("edit", str(src), "--mask", str(mask_path), "--prompt", "add a sun", "-o", str(out))

    assert len(with_gemini.requests) == 1
    body = upstream_json(with_gemini)
    images = inline_images(body)
    assert len(images) == 2  # the image, then the mask
    assert pixel_at(images[0])[:3] == (10, 200, 10)
    assert image_size(images[1]) == (64, 64) and pixel_at(images[1])[3] == 0
    text = prompt_text(body)
    assert "add a sun" in text and "mask" in text
    # Gemini takes no mask natively: the result keeps the original outside the transparent area.
    data = out.read_bytes()
    assert open_image(out) == ("PNG", (1024, 1024))
    assert pixel_at(data, 1000, 1000)[:3] == (10, 200, 10)
    assert pixel_at(data, 10, 10)[:3] == color_for(text)  # the fake colours by the whole prompt


def test_edit_requires_existing_image(with_gemini: FakeGemini, tmp_path: Path) -> None:
    result = invoke("edit", str(tmp_path / "missing.png"), "--prompt", "x")
    assert result.exit_code == 2
    assert with_gemini.requests == []


# --- errors ------------------------------------------------------------------------------


def test_generate_without_provider_fails_readably(tmp_path: Path) -> None:
    out = tmp_path / "none.png"
    result = invoke("generate", "a cat", "-o", str(out))

    assert result.exit_code == 1
    text = flat(result.stderr)
    assert "error (503 provider_not_configured)" in text
    assert MODEL in text and "GEMINI_API_KEY" in text  # says what to set
    assert "Traceback" not in result.output
    assert not out.exists()


def test_generate_bad_size_exits_1(with_gemini: FakeGemini, tmp_path: Path) -> None:
    result = invoke("generate", "a cat", "--size", "banana", "-o", str(tmp_path / "x.png"))

    assert result.exit_code == 1
    assert "size" in result.stderr.lower()
    assert "banana" in result.stderr
    assert with_gemini.requests == []


def test_param_without_value_is_usage_error(with_gemini: FakeGemini) -> None:
    result = invoke("generate", "a cat", "--param", "novalue")

    assert result.exit_code == 2
    assert "novalue" in result.stderr and "--param" in result.stderr
    assert with_gemini.requests == []


def test_upstream_failure_exits_1(with_gemini: FakeGemini, tmp_path: Path) -> None:
    from .fakes.gemini import GeminiError

    with_gemini.default_behaviour = GeminiError(400, "INVALID_ARGUMENT", "bad request upstream")
    result = invoke("generate", "a cat", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1
    assert "error" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_partial_failure_writes_what_succeeded_and_says_so(with_gemini: FakeGemini, tmp_path: Path) -> None:
    from .fakes.gemini import GeminiError

    with_gemini.enqueue(GeminiError(400, "INVALID_ARGUMENT", "one call fails"))
    result = ok("generate", "partial", "--n", "3", "-o", str(tmp_path / "p.png"))

    assert result.stdout.strip().splitlines() == [str(tmp_path / "p-1.png"), str(tmp_path / "p-2.png")]
    assert not (tmp_path / "p-3.png").exists()
    assert len(with_gemini.requests) == 3
    stderr = flat(result.stderr)
    assert "2 image(s)" in stderr and "adjusted n: 3 -> 2" in stderr


def test_output_into_missing_directory_is_created(with_gemini: FakeGemini, tmp_path: Path) -> None:
    """Regression: this used to crash with FileNotFoundError after the (paid) image was made."""
    out = tmp_path / "nodir" / "deeper" / "a.png"
    result = invoke("generate", "a cat", "-o", str(out), catch_exceptions=True)
    assert result.exit_code == 0, repr(result.exception)
    assert open_image(out) == ("PNG", (1024, 1024))


# --- against a running server ------------------------------------------------------------


def test_remote_generate(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "remote.png"
    result = ok("generate", "a remote cat", "--server", gateway.url, "--api-key", API_KEY, "-o", str(out))

    assert result.stdout.strip() == str(out)
    assert open_image(out) == ("PNG", (1024, 1024))
    assert pixel_at(out.read_bytes())[:3] == color_for("a remote cat")
    assert len(fake_gemini.requests) == 1
    assert "a remote cat" in prompt_text(upstream_json(fake_gemini))
    assert MODEL in result.stderr and "gemini" in result.stderr


def test_remote_generate_n_and_size(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "r.webp"
    result = ok(
        "generate",
        "two",
        "--server",
        gateway.url + "/",
        "--api-key",
        API_KEY,
        "--n",
        "2",
        "--size",
        "1920x1080",
        "-o",
        str(out),
    )

    paths = [tmp_path / "r-1.webp", tmp_path / "r-2.webp"]
    assert result.stdout.strip().splitlines() == [str(p) for p in paths]
    for p in paths:
        assert open_image(p) == ("WEBP", (1365, 768))


def test_remote_edit(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(solid_png(40, 40, (255, 0, 0)))
    b.write_bytes(solid_png(20, 20, (0, 255, 0)))
    out = tmp_path / "e.png"

    ok("edit", str(a), str(b), "--prompt", "merge", "--server", gateway.url, "--api-key", API_KEY, "-o", str(out))

    images = inline_images(upstream_json(fake_gemini))
    assert [image_size(img) for img in images] == [(40, 40), (20, 20)]
    assert open_image(out)[0] == "PNG"


def test_remote_wrong_key_exits_1(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "denied.png"
    result = invoke("generate", "a cat", "--server", gateway.url, "--api-key", "wrong", "-o", str(out))

    assert result.exit_code == 1
    assert "error" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert fake_gemini.requests == []


def test_remote_error_shows_the_http_status(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """Regression: remote errors used to print '(500 code)' whatever the HTTP status."""
    result = invoke("generate", "a cat", "--server", gateway.url, "--api-key", "wrong", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1
    assert "(401 invalid_api_key)" in flat(result.stderr)


def test_remote_bad_size_exits_1(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    result = invoke(
        "generate",
        "a cat",
        "--server",
        gateway.url,
        "--api-key",
        API_KEY,
        "--size",
        "banana",
        "-o",
        str(tmp_path / "x.png"),
    )
    assert_clean_failure(result)
    assert "banana" in result.stderr and "invalid_value" in result.stderr
    assert fake_gemini.requests == []


def test_remote_summary_mentions_adjustment(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """Regression: with --server the summary used to drop the response's adjustments."""
    result = ok(
        "generate",
        "wide",
        "--server",
        gateway.url,
        "--api-key",
        API_KEY,
        "--size",
        "1920x1080",
        "-o",
        str(tmp_path / "w.png"),
    )
    assert "adjusted size: 1920x1080 -> 1365x768" in flat(result.stderr)


def test_remote_unreachable_server_is_a_readable_error(tmp_path: Path) -> None:
    """Regression: this used to raise httpx.ConnectError out of the CLI (a traceback)."""
    server = f"http://127.0.0.1:{free_port()}"
    result = invoke(
        "generate", "a cat", "--server", server, "--api-key", "k", "-o", str(tmp_path / "x.png"), catch_exceptions=True
    )
    assert_clean_failure(result)


def test_remote_non_json_answer_is_a_readable_error(fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """Regression: a plain-text 404 page used to raise JSONDecodeError out of the CLI."""
    result = invoke(
        "generate",
        "a cat",
        "--server",
        fake_gemini.url,
        "--api-key",
        "k",
        "-o",
        str(tmp_path / "x.png"),
        catch_exceptions=True,
    )
    assert_clean_failure(result)


def test_remote_api_key_from_environment(
    gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGATE_SERVER", gateway.url)
    monkeypatch.setenv("IMAGEGATE_API_KEY", API_KEY)
    out = tmp_path / "env.png"
    ok("generate", "from env", "-o", str(out))
    assert open_image(out) == ("PNG", (1024, 1024))
    assert len(fake_gemini.requests) == 1


# --- models ------------------------------------------------------------------------------


def test_models_without_provider() -> None:
    result = ok("models")
    assert MODEL in result.stdout
    line = next(line for line in result.stdout.splitlines() if MODEL in line)
    assert "not configured" in line


def test_models_with_gemini(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "some-key")
    result = ok("models")
    line = next(line for line in result.stdout.splitlines() if MODEL in line)
    assert "gemini" in line.replace(MODEL, "")
    assert "not configured" not in line


def catalog_ids() -> list[str]:
    """Every id GET /v1/models lists: each model (built-in, then the provider plugins'), then its aliases."""
    return [name for model in build_catalog(FileConfig()) for name in (model.id, *model.aliases)]


def test_models_json_is_the_model_list_with_its_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "some-key")
    listing = json.loads(ok("models", "--json").stdout)
    assert listing["object"] == "list" and "notice" not in listing
    card = next(c for c in listing["data"] if c["id"] == MODEL)
    assert card["object"] == "model" and card["available"] is True
    assert {"modes", "parameters", "sizes", "price", "providers"} <= set(card)
    assert next(p for p in card["providers"] if p["id"] == "gemini")["configured"] is True
    alias = next(c for c in listing["data"] if c["id"] == "nano-banana-pro")  # aliases are listed, as by the API
    assert alias["alias_of"] == MODEL


def test_models_prints_every_id_whole_in_a_narrow_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = catalog_ids()
    assert max(len(i) for i in ids) > 20  # long enough that a 40-column table would cut or wrap them
    monkeypatch.setenv("COLUMNS", "40")
    lines = [line.strip(" │┃") for line in ok("models").stdout.splitlines()]
    for model_id in ids:
        assert any(model_id == line or line.startswith(model_id + " ") for line in lines), (model_id, lines)
    assert "…" not in ok("models").stdout


def test_models_in_a_wide_terminal_is_one_table_row_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "some-key")
    rows = [line for line in ok("models").stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == catalog_ids()
    alias_row = next(row for row in rows if row.split("│")[1].strip() == "nano-banana-pro")
    assert f"alias of {MODEL}" in alias_row


def test_models_from_a_running_server(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    """--server lists what the server serves (its gemini key), not what this environment has (none)."""
    served = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}, timeout=30).json()
    listing = json.loads(ok("models", "--json", "--server", gateway.url, "--api-key", API_KEY).stdout)
    assert listing == served
    line = next(
        line
        for line in ok("models", "--server", gateway.url, "--api-key", API_KEY).stdout.splitlines()
        if MODEL in line
    )
    assert "gemini" in line.replace(MODEL, "") and "not configured" not in line
    assert "not configured" in next(line for line in ok("models").stdout.splitlines() if MODEL in line)


def test_models_server_and_key_from_the_environment(
    gateway: RunningGateway, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGATE_SERVER", gateway.url)
    monkeypatch.setenv("IMAGEGATE_API_KEY", API_KEY)
    listing = json.loads(ok("models", "--json").stdout)
    card = next(c for c in listing["data"] if c["id"] == MODEL)
    assert card["available"] is True


def test_models_server_with_a_wrong_key_exits_1(gateway: RunningGateway) -> None:
    result = invoke("models", "--server", gateway.url, "--api-key", "wrong")
    assert_clean_failure(result)
    assert "401" in result.stderr


def test_models_unreachable_server_is_a_readable_error() -> None:
    result = invoke("models", "--server", f"http://127.0.0.1:{free_port()}")
    assert_clean_failure(result)
    assert "Could not reach" in flat(result.stderr)


# --- usage -------------------------------------------------------------------------------


def record_usage(rows: list[tuple[float, str | None, str, str, int, float]]) -> None:
    """Usage rows (age in seconds, key id, model, provider, images, cost) in IMAGEGATE_DATA_DIR's log."""
    db = Database(Settings().database_path)
    try:
        log = UsageLog(db)
        now = time.time()
        for index, (age, key_id, model, provider, images, cost) in enumerate(rows):
            log.record(
                UsageRecord(f"req_{index}", key_id, None, model, provider, "t2i", images, cost, 0, 0), at=now - age
            )
    finally:
        db.close()


def usage_json(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok("usage", "--json", *args).stdout)
    return data


HOUR, DAY = 3600.0, 86400.0
SEEDREAM = "bytedance/seedream-4"


@pytest.fixture
def recorded() -> None:
    record_usage(
        [
            (1 * HOUR, "key_a", MODEL, "gemini", 2, 0.268),
            (2 * HOUR, "key_a", MODEL, "gemini", 1, 0.134),
            (3 * HOUR, "key_b", MODEL, "fal", 1, 0.15),
            (3 * DAY, "key_b", SEEDREAM, "replicate", 4, 0.12),
            (40 * DAY, "key_a", MODEL, "gemini", 10, 1.34),
        ]
    )


def test_usage_defaults_to_30_days_grouped_by_key_model_and_provider(recorded: None) -> None:
    data = usage_json()
    assert data["by"] == ["key", "model", "provider"] and data["currency"] == "USD"
    groups = {(t["key"], t["model"], t["provider"]): (t["requests"], t["images"], t["cost"]) for t in data["totals"]}
    assert groups == {
        ("key_a", MODEL, "gemini"): (2, 3, 0.402),
        ("key_b", MODEL, "fal"): (1, 1, 0.15),
        ("key_b", SEEDREAM, "replicate"): (1, 4, 0.12),
    }  # the 40-day-old row is out
    # recorded without a delivered mark: every image counts as undelivered
    assert data["total"] == {"requests": 4, "images": 8, "undelivered_images": 8, "cost": pytest.approx(0.672)}


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("model", {MODEL: (3, 4, 0.552), SEEDREAM: (1, 4, 0.12)}),
        ("provider", {"gemini": (2, 3, 0.402), "fal": (1, 1, 0.15), "replicate": (1, 4, 0.12)}),
        ("key", {"key_a": (2, 3, 0.402), "key_b": (2, 5, 0.27)}),
    ],
)
def test_usage_by_one_grouping(recorded: None, by: str, expected: dict[str, tuple[int, int, float]]) -> None:
    data = usage_json("--by", by)
    got = {t[by]: (t["requests"], t["images"], pytest.approx(t["cost"])) for t in data["totals"]}
    assert got == expected
    assert all(set(t) <= {by, "key_name", "requests", "images", "undelivered_images", "cost"} for t in data["totals"])


def test_usage_period_by_span_and_by_iso_date(recorded: None) -> None:
    assert usage_json("--since", "24h")["total"]["requests"] == 3
    assert usage_json("--since", "90m")["total"]["requests"] == 1
    assert usage_json("--since", "7d", "--until", "1d")["total"] == {
        "requests": 1,
        "images": 4,
        "undelivered_images": 4,
        "cost": 0.12,
    }
    assert usage_json("--since", "2000-01-01")["total"]["requests"] == 5
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + DAY))
    assert usage_json("--since", tomorrow, "--until", "2999-01-01T00:00:00+00:00")["totals"] == []


def test_usage_table_names_stored_keys_and_totals(recorded: None) -> None:
    key_id, _ = create_key("laptop")
    record_usage([(60.0, key_id, MODEL, "gemini", 1, 0.134)])
    out = ok("usage", "--by", "key").stdout
    assert f"{key_id} (laptop)" in out
    total = next(line for line in out.splitlines() if "total" in line)
    assert "$0.8060" in total and " 9 " in total  # 0.672 + 0.134; 8 + 1 images


@pytest.mark.parametrize(
    "args", [["--since", "yesterday"], ["--until", "3 days"], ["--since", "1d", "--until", "2d"], ["--by", "user"]]
)
def test_usage_bad_period_or_grouping_is_a_usage_error(args: list[str]) -> None:
    result = invoke("usage", *args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.stderr


def test_usage_of_real_requests(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    """Usage made through the gateway (which shares IMAGEGATE_DATA_DIR with the CLI here)."""
    client = gateway.client()
    costs = [
        client.images.generate(model=MODEL, prompt="counted", n=n, response_format="b64_json").usage for n in (1, 2)
    ]
    data = usage_json()
    assert len(data["totals"]) == 1
    row = data["totals"][0]
    assert row["key"].startswith("static-") and row["model"] == MODEL and row["provider"] == "gemini"
    assert (row["requests"], row["images"]) == (2, 3)
    assert row["cost"] == pytest.approx(sum(u.model_extra["cost"] for u in costs if u and u.model_extra))


def test_usage_with_nothing_recorded_says_so() -> None:
    result = ok("usage")
    assert "no usage recorded" in result.stderr
    assert usage_json()["totals"] == [] and usage_json()["total"]["requests"] == 0


# --- keys --------------------------------------------------------------------------------


def create_key(name: str, *options: str) -> tuple[str, str]:
    """(id, plaintext) from `keys create NAME [OPTIONS]`."""
    result = ok("keys", "create", name, *options)
    plaintext = result.stdout.strip()
    key_id = next(word for word in result.stderr.split() if word.startswith("key_"))
    return key_id, plaintext


def test_keys_create_list_revoke() -> None:
    key_id, plaintext = create_key("laptop")
    assert plaintext.startswith("ig-")
    assert len(plaintext) > 20
    assert "\n" not in plaintext

    listed = ok("keys", "list").stdout
    row = next(line for line in listed.splitlines() if key_id in line)
    assert "laptop" in row and "active" in row
    assert plaintext not in listed
    assert plaintext[:10] in row  # only the prefix is shown

    revoked = ok("keys", "revoke", key_id)
    assert key_id in revoked.stdout

    listed = ok("keys", "list").stdout
    row = next(line for line in listed.splitlines() if key_id in line)
    assert "revoked" in row and "active" not in row

    # Revoking twice, or an id that never existed, fails.
    again = invoke("keys", "revoke", key_id)
    assert again.exit_code == 1
    assert key_id in again.stderr


def test_keys_revoke_unknown_exits_1() -> None:
    result = invoke("keys", "revoke", "key_doesnotexist")
    assert result.exit_code == 1
    assert "key_doesnotexist" in result.stderr


def test_keys_are_stored_in_data_dir(tmp_path: Path) -> None:
    create_key("one")
    assert (tmp_path / "data").is_dir()
    assert any((tmp_path / "data").iterdir())


def test_created_key_works_against_a_server(gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    assert os.environ["IMAGEGATE_DATA_DIR"] == str(tmp_path / "data")
    key_id, plaintext = create_key("server-user")
    other_id, other = create_key("to-revoke")
    ok("keys", "revoke", other_id)

    gw: RunningGateway = gateway_factory(
        api_keys="", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url
    )
    result = gw.client(api_key=plaintext).images.generate(model=MODEL, prompt="keyed", response_format="b64_json")
    assert image_size(base64.b64decode(result.data[0].b64_json or "")) == (1024, 1024)

    for bad in ("ig-not-a-real-key", other):
        response = httpx.post(
            f"{gw.url}/v1/images/generations", json={"prompt": "x"}, headers={"authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401

    out = tmp_path / "cli.png"
    ok("generate", "via cli", "--server", gw.url, "--api-key", plaintext, "-o", str(out))
    assert open_image(out) == ("PNG", (1024, 1024))


def listed_keys() -> dict[str, dict[str, Any]]:
    """`keys list --json`: the admin API's key objects, by id."""
    return {key["id"]: key for key in json.loads(ok("keys", "list", "--json").stdout)}


def test_keys_create_with_a_policy() -> None:
    result = ok(
        "keys",
        "create",
        "tenant",
        "--models",
        f"{MODEL},nano-banana-pro",  # an alias is allowed
        "--requests-per-minute",
        "60",
        "--images-per-minute",
        "100",
        "--usd-per-day",
        "5",
        "--usd-per-month",
        "100.5",
        "--expires-at",
        "2099-01-02T03:04:05Z",
        "--admin",
    )
    key_id = next(word for word in result.stderr.split() if word.startswith("key_"))
    assert result.stdout.strip().startswith("ig-")  # stdout is still the key alone
    assert "60 req/min" in flat(result.stderr) and "$5/day" in flat(result.stderr)
    key = listed_keys()[key_id]
    assert key["models"] == [MODEL, "nano-banana-pro"]
    assert key["rate_limits"] == {"requests_per_minute": 60, "images_per_minute": 100}
    assert key["budget"] == {"usd_per_day": 5.0, "usd_per_month": 100.5}
    assert key["expires_at"] == int(datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) and key["admin"] is True


def test_keys_list_shows_the_policy_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: one line per key
    key_id, _ = create_key("t", "--requests-per-minute", "7", "--usd-per-month", "3")
    plain_id, _ = create_key("plain")
    listed = ok("keys", "list").stdout
    header = next(line for line in listed.splitlines() if "prefix" in line)
    for column in ("models", "limits", "expires", "admin"):
        assert column in header
    row = next(line for line in listed.splitlines() if key_id in line)
    assert "7 req/min" in row and "$3/month" in row and "never" in row and "all" in row
    plain = next(line for line in listed.splitlines() if plain_id in line)
    assert "req/min" not in plain


def test_keys_update_changes_only_what_is_given() -> None:
    key_id, _ = create_key("t", "--models", MODEL, "--requests-per-minute", "7", "--images-per-minute", "9")
    result = ok("keys", "update", key_id, "--requests-per-minute", "none", "--usd-per-day", "2", "--name", "renamed")
    assert key_id in result.stdout
    key = listed_keys()[key_id]
    assert key["name"] == "renamed"
    assert key["rate_limits"] == {"requests_per_minute": None, "images_per_minute": 9}
    assert key["budget"]["usd_per_day"] == 2.0 and key["models"] == [MODEL]

    ok("keys", "update", key_id, "--expires-at", str(int(time.time()) + 600), "--admin")
    assert listed_keys()[key_id]["expires_at"] is not None and listed_keys()[key_id]["admin"] is True
    ok("keys", "update", key_id, "--no-expiry", "--all-models", "--no-admin")
    key = listed_keys()[key_id]
    assert (key["expires_at"], key["models"], key["admin"]) == (None, None, False)


@pytest.mark.parametrize(
    "options",
    [
        ["--requests-per-minute", "0"],
        ["--images-per-minute", "-5"],
        ["--requests-per-minute", "many"],
        ["--usd-per-day", "-1"],
        ["--usd-per-month", "inf"],
        ["--models", "no-such-model"],
        ["--models", ","],
        ["--expires-at", "2001-01-01"],
        ["--expires-at", "soon"],
    ],
)
def test_keys_create_and_update_refuse_bad_policies(options: list[str]) -> None:
    refused = invoke("keys", "create", "t", *options)
    assert refused.exit_code == 2, refused.output  # click's usage error: the option is named
    assert options[0] in refused.stderr
    assert listed_keys() == {}
    key_id, _ = create_key("t")
    assert invoke("keys", "update", key_id, *options).exit_code == 2
    assert listed_keys()[key_id]["rate_limits"]["requests_per_minute"] is None


def test_keys_update_needs_a_change_and_a_key() -> None:
    key_id, _ = create_key("t")
    assert invoke("keys", "update", key_id).exit_code == 2
    assert invoke("keys", "update", key_id, "--no-expiry", "--expires-at", "2099-01-01").exit_code == 2
    missing = invoke("keys", "update", "key_doesnotexist", "--admin")
    assert missing.exit_code == 1 and "key_doesnotexist" in missing.stderr


def test_a_key_limited_by_the_cli_is_refused_a_model_it_may_not_use(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    """The policy the CLI stores is the one the gateway serves (KeyStore.policy)."""
    key_id, _ = create_key("t")
    ok("keys", "update", key_id, "--models", "nano-banana-pro", "--requests-per-minute", "3")
    gw: RunningGateway = gateway_factory(
        api_keys="", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url
    )
    db = Database(gw.settings.database_path)
    try:
        policy = KeyStore(db).policy(key_id)
    finally:
        db.close()
    assert policy is not None and policy.models == ("nano-banana-pro",)
    assert policy.rate_limits.requests_per_minute == 3


# --- serve -------------------------------------------------------------------------------


def test_serve_help() -> None:
    result = ok("serve", "--help")
    assert "--host" in result.stdout and "--port" in result.stdout


def test_top_level_help_lists_commands() -> None:
    result = ok("--help")
    for name in ("serve", "generate", "edit", "models", "usage", "keys"):
        assert name in result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def imagegate_command() -> list[str]:
    script = Path(sys.executable).parent / "imagegate"
    if script.exists():
        return [str(script)]
    found = shutil.which("imagegate")
    if found:
        return [found]
    return [sys.executable, "-c", "from imagegate.cli import cli; cli()"]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_smoke(fake_gemini: FakeGemini, tmp_path: Path, workers: int) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "IMAGEGATE_API_KEYS": API_KEY,
            "IMAGEGATE_DATA_DIR": str(tmp_path / "serve-data"),
            "GEMINI_API_KEY": fake_gemini.api_key,
            "GEMINI_BASE_URL": fake_gemini.base_url,
        }
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                *imagegate_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, f"serve exited early: {log.read_text(errors='replace')}"
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"serve never became healthy: {log.read_text(errors='replace')}"
                time.sleep(0.1)

            client = OpenAI(api_key=API_KEY, base_url=f"{base}/v1", max_retries=0, timeout=30)
            # With several workers, a result stored by one is served by any (shared data dir).
            for _ in range(2 * workers):
                result = client.images.generate(model=MODEL, prompt="served")
                url = result.data[0].url
                assert url is not None and url.startswith(base + "/")
                downloaded = httpx.get(url, timeout=10)
                assert downloaded.status_code == 200
                assert image_size(downloaded.content) == (1024, 1024)
            assert len(fake_gemini.requests) == 2 * workers
            # Forwarded headers from a peer not in IMAGEGATE_TRUSTED_PROXIES change nothing (uvicorn
            # itself would believe X-Forwarded-Proto from loopback; serve turns that off).
            spoofed = httpx.post(
                f"{base}/v1/images/generations",
                timeout=30,
                json={"model": MODEL, "prompt": "served", "response_format": "url"},
                headers={
                    "authorization": f"Bearer {API_KEY}",
                    "x-forwarded-proto": "https",
                    "x-forwarded-for": "10.0.0.1",
                    "x-forwarded-host": "evil.example",
                    "forwarded": "proto=https;host=evil.example",
                },
            )
            assert spoofed.json()["data"][0]["url"].startswith(base + "/v1/results/")

            denied = httpx.post(f"{base}/v1/images/generations", json={"prompt": "x"}, timeout=10)
            assert denied.status_code == 401
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def test_plugins_lists_each_provider_and_whether_it_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "secret-fal-key")
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)["providers"]}
    assert rows["fal"]["configured"] is True and rows["gemini"]["configured"] is False
    assert rows["fal"]["plugin"] == "imagegate.providers.fal"
    assert {"name": "api_key", "env": "FAL_KEY", "required": True, "set": True} in rows["fal"]["settings"]
    assert "secret-fal-key" not in result.stdout
    table = invoke("plugins")
    assert table.exit_code == 0 and "REPLICATE_API_TOKEN (required)" in table.stdout


# --- --stream ----------------------------------------------------------------------------


def test_generate_stream_shows_and_saves_each_partial_image(with_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    result = ok("generate", "a fox", "--stream", "--save-partials", "-o", str(out))
    assert result.stdout.strip().splitlines() == [str(out)]
    text = flat(result.stderr)
    assert "partial image 1 after" in text and "partial image 2 after" in text and "final image after" in text
    for index in (1, 2):
        saved = tmp_path / f"fox-partial-{index}.png"
        assert pixel_at(saved.read_bytes())[:3] == thought_color(index - 1)
    assert pixel_at(out.read_bytes())[:3] == color_for("a fox")
    assert ":streamGenerateContent" in with_gemini.requests[-1].path


def test_remote_generate_stream(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    out = tmp_path / "remote.png"
    result = ok(
        "generate", "a remote fox", "--stream", "--partial-images", "1", "--save-partials",
        "--server", gateway.url, "--api-key", API_KEY, "-o", str(out),
    )  # fmt: skip
    assert result.stdout.strip() == str(out)
    assert "partial image 1 after" in flat(result.stderr) and "partial image 2" not in flat(result.stderr)
    assert pixel_at((tmp_path / "remote-partial-1.png").read_bytes())[:3] == thought_color(0)
    assert pixel_at(out.read_bytes())[:3] == color_for("a remote fox")
    assert MODEL in result.stderr


def test_remote_stream_error_exits_1(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "broke"))
    result = invoke(
        "generate", "a cat", "--stream", "--server", gateway.url, "--api-key", API_KEY, "-o", str(tmp_path / "x.png")
    )
    assert_clean_failure(result)
    assert not (tmp_path / "x.png").exists()
