"""schemathesis against a real gateway's own /openapi.json: no operation answers a server error.

The gateway has every provider its catalog names behind a fake upstream on loopback (Gemini,
OpenAI, Replicate, BFL), so each model routes to a real adapter speaking the provider's wire
format, and the fakes answer success: any 5xx is then a gateway bug, never a missing provider
(503 provider_not_configured) or an upstream fault. Vertex and fal serve only models Gemini
serves first, so they would never be reached. The local engine is not configured, so its
capacity 503 cannot happen.

schemathesis runs as its CLI (what the issue names) with a fixed seed and every phase: the
schema's examples, the coverage phase (boundaries and negative values), random fuzzing, and the
stateful phase, which follows the document's OpenAPI `links` (a created key's id to
GET/PATCH/DELETE /v1/admin/keys/{key_id}, an async job's id to /v1/images/jobs/{job_id}...).
The bearer key is an admin key (IMAGEGATE_ADMIN_KEYS), which may also generate, so one header
reaches every operation, the admin API included. Its JSON report is read back to check that
every operation was tested and that the image operations accepted generated data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import RunningGateway
from ..fakes.bfl import FakeBfl
from ..fakes.gemini import FakeGemini
from ..fakes.openai_upstream import FakeOpenAI
from ..fakes.replicate import FakeReplicate

ADMIN_KEY = "sk-fuzz-admin"
SEED = 20261201
MAX_EXAMPLES = 60  # per operation and phase: about 4,000 cases, well under a minute here
PHASES = "examples,coverage,fuzzing,stateful"
# The operations whose bodies reach the core logic (routing, adapters, the key store): generated
# data must get through their validation, not only be refused by it.
ROOT = Path(__file__).resolve().parents[2]
HOOKS = "tests.server.schemathesis_hooks"  # real pictures in half the fuzzed edits (see the module)
CORE_OPERATIONS = ("POST /v1/images/generations", "POST /v1/images/edits", "POST /v1/admin/keys")


@pytest.fixture
def fake_bfl() -> Iterator[FakeBfl]:
    with FakeBfl() as fake:
        yield fake


@pytest.fixture
def every_provider(
    gateway_factory: Any,
    fake_gemini: FakeGemini,
    fake_openai: FakeOpenAI,
    fake_replicate: FakeReplicate,
    fake_bfl: FakeBfl,
) -> RunningGateway:
    gw: RunningGateway = gateway_factory(
        admin_keys=ADMIN_KEY,
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        openai_api_key=fake_openai.api_key,
        openai_base_url=fake_openai.base_url,
        replicate_api_key=fake_replicate.api_key,
        replicate_base_url=fake_replicate.base_url,
        bfl_api_key=fake_bfl.api_key,
        bfl_base_url=fake_bfl.base_url,
    )
    return gw


def schemathesis_cli() -> list[str]:
    """The CLI of the interpreter running the tests (its venv's entry point, by its module)."""
    return [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]


def run_schemathesis(url: str, workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One run against url/openapi.json; its output and its JSON report. Everything it writes
    (the report; no example database) stays in workdir, which pytest deletes."""
    command = [
        *schemathesis_cli(),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        PHASES,
        "--workers",
        "1",  # one at a time: the same seed then gives the same run
        "--continue-on-failure",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(workdir / "report.json"),
        *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False)
    report_path = workdir / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    return result, report


def test_schemathesis_finds_no_server_error(every_provider: RunningGateway, tmp_path: Path) -> None:
    result, report = run_schemathesis(every_provider.url, tmp_path)
    output = result.stdout + result.stderr
    print(output)  # pytest shows it with a failure (or with -s): the cases, the curl to replay each
    assert result.returncode == 0, output
    assert report["complete"] and report["failures"] == [] and report["errors"] == [], output
    operations = report["operations"]
    assert operations["selected"] == operations["total"] == operations["tested"] > 20, operations
    assert all(status["status"] == "success" for status in report["phases"].values()), report["phases"]
    assert report["test_cases"]["generated"] > 1000, report["test_cases"]
    for operation in CORE_OPERATIONS:
        accepted = sum(phase["accepted"] for phase in report["valid_rates"][operation].values())
        assert accepted > 0, (operation, report["valid_rates"][operation])
