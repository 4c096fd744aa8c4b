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
One run sends an admin key (IMAGEGATE_ADMIN_KEYS), which may also generate, so one header
reaches every operation, the admin API included; a second, shorter one sends a tenant's key
(IMAGEGATE_API_KEYS) to every operation but the admin API's. Beside no server error, the answers
are checked against the document (EXCLUDED_CHECKS below says which are not). The JSON report is read back to check that every
operation was tested and that the image operations accepted generated data; the output, with a
curl command for each failure, is printed (pytest shows it on a failure, or with -s).

    PYTHONPATH=src python -m pytest -q tests/server/test_openapi_fuzz.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.bfl import FakeBfl
from ..fakes.gemini import FakeGemini
from ..fakes.openai_upstream import FakeOpenAI
from ..fakes.replicate import FakeReplicate

ADMIN_KEY = "sk-fuzz-admin"
SEED = 20261201
PHASES = "examples,coverage,fuzzing,stateful"
# Beside no server error, every check that the API's answers must pass: each status, content
# type, body and header as documented, a 405 with Allow for an undeclared method, a 401 without
# the key (ignored_auth), a created key or job readable by id. Left out, and why (the report lists
# what they find): positive_data_acceptance and negative_data_rejection, since some of the API's
# rules cannot be stated in a schema (a job cursor that is yours, a time in the future, one model's
# own values, Prefer: respond-async with an Idempotency-Key); use_after_free, since a revoked key
# stays readable, with revoked_at set, by design.
EXCLUDED_CHECKS = "positive_data_acceptance,negative_data_rejection,use_after_free"
ROOT = Path(__file__).resolve().parents[2]
HOOKS = "tests.server.schemathesis_hooks"  # real pictures in half the fuzzed edits (see the module)
# The operations whose bodies reach the core logic (routing, adapters, the key store): generated
# data must get through their validation, not only be refused by it.
CORE_OPERATIONS = ("POST /v1/images/generations", "POST /v1/images/edits")


@dataclass(frozen=True)
class Caller:
    """Whose key schemathesis sends, how hard it tries, and which operations it takes."""

    key: str
    max_examples: int  # per operation and phase
    exclude_tag: str | None = None


CALLERS = {
    # An admin key reaches every operation, the admin API included, and may generate too.
    "admin": Caller(ADMIN_KEY, max_examples=100),
    # A tenant's key (IMAGEGATE_API_KEYS): its own jobs and usage; the admin API is only its 403.
    "tenant": Caller(API_KEY, max_examples=20, exclude_tag="admin"),
}


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


def run_schemathesis(
    url: str, workdir: Path, caller: Caller
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One run against url/openapi.json; its output and its JSON report. Everything it writes
    (the report; no example database) stays in workdir, which pytest deletes."""
    command = [
        *schemathesis_cli(),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        EXCLUDED_CHECKS,
        "--header",
        f"Authorization: Bearer {caller.key}",
        "--seed",
        str(SEED),
        "--max-examples",
        str(caller.max_examples),
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
        *(("--exclude-tag", caller.exclude_tag) if caller.exclude_tag else ()),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False)
    report_path = workdir / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    return result, report


@pytest.mark.parametrize("caller", list(CALLERS))
def test_schemathesis_finds_no_server_error(every_provider: RunningGateway, tmp_path: Path, caller: str) -> None:
    result, report = run_schemathesis(every_provider.url, tmp_path, CALLERS[caller])
    output = result.stdout + result.stderr
    print(output)  # pytest shows it with a failure (or with -s): the cases, the curl to replay each
    assert result.returncode == 0, output
    assert report["complete"] and report["failures"] == [] and report["errors"] == [], output
    operations = report["operations"]
    assert operations["selected"] == operations["tested"] > 15, operations  # every operation selected ran
    if CALLERS[caller].exclude_tag is None:
        assert operations["selected"] == operations["total"], operations
    assert all(status["status"] == "success" for status in report["phases"].values()), report["phases"]
    assert report["test_cases"]["generated"] > 1000, report["test_cases"]
    for operation in CORE_OPERATIONS:
        accepted = sum(phase["accepted"] for phase in report["valid_rates"][operation].values())
        assert accepted > 0, (operation, report["valid_rates"][operation])
    # The stateful phase followed the document's links to the by-id operations.
    assert not {"GET /v1/images/jobs/{job_id}", "GET /v1/admin/keys/{key_id}"} & set(
        report["warnings"]["missing_test_data"]
    ), report["warnings"]


def test_with_only_gemini_configured_schemathesis_finds_no_server_error(
    gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    """The usual deployment has some providers, not all: the document then offers only the models
    this gateway serves (openapi.py), so generated requests never pick one whose provider is
    missing (a 503 provider_not_configured, the operator's to fix)."""
    gw: RunningGateway = gateway_factory(
        admin_keys=ADMIN_KEY, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url
    )
    result, report = run_schemathesis(gw.url, tmp_path, Caller(ADMIN_KEY, max_examples=20))
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output
    assert report["complete"] and report["failures"] == [] and report["errors"] == [], output
    assert report["operations"]["selected"] == report["operations"]["tested"] == report["operations"]["total"]
    assert report["test_cases"]["generated"] > 500, report["test_cases"]
