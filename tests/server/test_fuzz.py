"""300 seeded fuzz cases (tests/fuzzing.py) through real gateways: never a 500, no 5xx for
client input, OpenAI's error shape on every error. bench/fuzz.py runs 3,000 of the same kind."""

from __future__ import annotations

import logging

import pytest

from ..fuzzing import make_cases, run_cases

SEED = 20261201
COUNT = 300


def test_fuzzed_requests_get_no_500_and_proper_errors(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    cases = make_cases(SEED, COUNT)
    report = run_cases(cases)
    assert len(report.outcomes) == COUNT
    broken = [f"#{o.case.index} {o.status} {o.problem}: {o.case.what[:120]}" for o in report.problems]
    assert broken == []
    # The cases reach what they are meant to: successes, refusals, and upstream failures.
    client, upstream = report.by_status("client"), report.by_status("upstream")
    assert client[200] > 0 and client[400] > COUNT // 3
    assert sum(n for status, n in upstream.items() if status in (502, 503, 504)) > 0
    assert not [r for r in caplog.records if r.name == "imagegate" and r.levelno >= logging.ERROR]


def test_cases_are_deterministic() -> None:
    first, second = make_cases(SEED, 50), make_cases(SEED, 50)
    assert [(c.path, c.headers, c.body, c.what) for c in first] == [(c.path, c.headers, c.body, c.what) for c in second]
