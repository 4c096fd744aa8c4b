"""A provider added from outside the repository: the example plugin package
(examples/imagegate-testpattern) is installed with pip into a FRESH venv beside imagegate and
served from there, with no setting but an API key and a data dir.

Nothing is downloaded: the fresh venv sees this checkout's `src` and the test venv's installed
packages (imagegate's dependencies, pip, setuptools) through a `.pth` file, the way a venv
made with `--system-site-packages` sees the system's. The plugin itself is a real
`pip install --no-deps --no-build-isolation` of the example, so its entry point comes from the
dist-info pip writes, exactly as for any installed plugin.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from imagegate.config import FileConfig
from imagegate.gateway import build_catalog
from imagegate.plugins import load_registry

from .fakes.images import image_size, pixel_at, solid_png
from .server.serve_process import SRC, free_port

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagegate-testpattern"
KEY = "plugin-test-key"
GREEN = (10, 200, 30)


def _run(*args: str | Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _bare_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH, no user site, no imagegate or provider variable: only what a shell has."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }


class PluginVenv(NamedTuple):
    python: Path  # the fresh venv's interpreter
    source: Path  # the copy of the example that pip installed (its tests too)
    env: dict[str, str]


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    """A fresh venv holding the example plugin, pip-installed."""
    root = tmp_path_factory.mktemp("example-plugin")
    env = _bare_env(root)
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, env=env)
    python = venv / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=env).strip()
    ours = dict.fromkeys([SRC, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "imagegate-under-test.pth").write_text("\n".join(ours) + "\n")
    source = root / "imagegate-testpattern"  # pip builds in the tree: build it in a copy, not in the repo
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", source, env=env)
    return PluginVenv(python, source, env)


@pytest.fixture(scope="module")
def plugin_gateway(plugin_venv: PluginVenv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m imagegate serve` from the plugin's venv: an API key and a data dir, nothing else."""
    root = tmp_path_factory.mktemp("example-plugin-serve")
    env = _bare_env(root) | {"IMAGEGATE_API_KEYS": KEY, "IMAGEGATE_DATA_DIR": str(root / "data")}
    port = free_port()
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(plugin_venv.python), "-m", "imagegate", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (root / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (root / "serve.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def decoded(result: Any, index: int = 0) -> bytes:
    return base64.b64decode(result.data[index].b64_json or "")


def test_the_installed_plugin_is_listed_with_its_catalog_entry(plugin_gateway: str) -> None:
    ids = [model.id for model in client(plugin_gateway).models.list()]
    assert "testpattern" in ids
    card = httpx.get(f"{plugin_gateway}/v1/models/testpattern", headers={"authorization": f"Bearer {KEY}"}).json()
    assert card["available"] is True and card["modes"] == ["t2i", "edit"]
    assert [p["id"] for p in card["providers"]] == ["testpattern"]
    assert card["providers"][0]["price"]["per_image"] == 0 and card["pixel_limits"]["max_side"] == 2048
    assert card["parameters"]["pattern"]["values"] == ["bars", "gradient", "grid"]


def test_generation_is_served_by_the_plugin_at_the_requested_size(plugin_gateway: str) -> None:
    response = client(plugin_gateway).images.with_raw_response.generate(
        model="testpattern",
        prompt="colour bars",
        size="320x240",
        n=2,
        response_format="b64_json",
        extra_body={"pattern": "bars", "seed": 3},
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "testpattern"
    assert response.headers["x-imagegate-model"] == "testpattern"
    first, second = decoded(result, 0), decoded(result, 1)
    assert image_size(first) == image_size(second) == (320, 240)
    assert first != second  # image i is drawn with seed + i
    with Image.open(io.BytesIO(first)) as image:
        assert len(image.convert("RGB").getcolors() or []) == 7  # seven bars
    assert result.usage is not None and result.usage.model_dump()["cost"] == 0


def test_an_edit_draws_the_pattern_over_the_image_inside_the_mask(plugin_gateway: str) -> None:
    mask = Image.new("RGBA", (64, 48), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 48))  # the left half may change
    out = io.BytesIO()
    mask.save(out, "PNG")
    response = client(plugin_gateway).images.with_raw_response.edit(
        model="testpattern",
        prompt="a grid",
        image=("in.png", solid_png(64, 48, GREEN), "image/png"),
        mask=("mask.png", out.getvalue(), "image/png"),
        size="256x192",
        response_format="b64_json",
        extra_body={"pattern": "grid"},
    )
    assert response.headers["x-imagegate-provider"] == "testpattern"
    edited = decoded(response.parse())
    assert image_size(edited) == (256, 192)
    assert pixel_at(edited, 200, 100)[:3] == GREEN  # outside the mask: the input, untouched
    assert pixel_at(edited, 60, 100)[:3] != GREEN  # inside: the pattern over it


def test_the_plugin_is_not_in_this_venv(gateway_factory: Any) -> None:
    """The tests' own environment has no testpattern: the served one came from the fresh venv."""
    assert load_registry().get("testpattern") is None
    assert build_catalog(FileConfig()).get("testpattern") is None
    ids = [model.id for model in gateway_factory().client().models.list()]
    assert "testpattern" not in ids and "gpt-image-1" in ids


def test_the_plugins_own_tests_pass_in_its_venv(plugin_venv: PluginVenv) -> None:
    """docs/plugins.md's recipe for testing a plugin (its tests/), run where it is installed."""
    output = _run(
        plugin_venv.python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        plugin_venv.source / "tests",
        env=plugin_venv.env,
    )
    assert "3 passed" in output


def test_imagegate_plugins_names_it_configured_with_no_setting(plugin_venv: PluginVenv, tmp_path: Path) -> None:
    env = plugin_venv.env | {"IMAGEGATE_DATA_DIR": str(tmp_path / "data")}
    listing = json.loads(_run(plugin_venv.python, "-m", "imagegate", "plugins", "--json", env=env))
    (row,) = [row for row in listing["providers"] if row["id"] == "testpattern"]
    assert (row["plugin"], row["configured"]) == ("imagegate_testpattern", True)
    assert row["settings"] == [
        {"name": "edit_opacity", "env": "TESTPATTERN_EDIT_OPACITY", "required": False, "set": True}
    ]
