"""The job routes across two gateway servers over one database, each with its own data dir (as on
two hosts): a job posted to one is listed, read, followed and cancelled through the other. Both
servers run in this process (their runners tell each other apart by their runner token); the
multi-process tests against PostgreSQL and Redis live with the other multi-instance tests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegate import db as dbm

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini, Hang
from ..fakes.images import solid_png
from .test_jobs import ASYNC, MODEL, auth, events, get_job, submit, wait_job, wait_until


@pytest.fixture(params=["sqlite", "postgresql"])
def two_instances(
    request: pytest.FixtureRequest, gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path
) -> tuple[RunningGateway, RunningGateway]:
    """Two servers on one database (a SQLite file outside their data dirs, or real PostgreSQL)."""
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        database_url = request.getfixturevalue("postgres_url")
        dbm.migrate(database_url)
    a, b = (
        gateway_factory(
            data_dir=tmp_path / name,
            database_url=database_url,
            gemini_api_key=fake_gemini.api_key,
            gemini_base_url=fake_gemini.base_url,
            stream_keepalive_seconds=0.2,
        )
        for name in ("a", "b")
    )
    return a, b


def test_an_edit_posted_to_one_instance_is_read_listed_and_followed_on_the_other(
    two_instances: tuple[RunningGateway, RunningGateway], fake_gemini: FakeGemini
) -> None:
    a, b = two_instances
    upload = solid_png(48, 32, (0, 120, 240))
    response = httpx.post(
        f"{a.url}/v1/images/edits",
        data={"model": MODEL, "prompt": "make it red", "response_format": "b64_json"},
        files=[("image[]", ("in.png", upload, "image/png"))],
        headers={**auth(), **ASYNC},
        timeout=30,
    )
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert get_job(b, job_id).status_code == 200  # on B the moment A answered
    lines = events(b, job_id)  # from before it ends (or after): replayed, then followed, to the end
    job = wait_job(b, job_id)
    assert job["status"] == "succeeded"
    listed = httpx.get(f"{b.url}/v1/images/jobs", headers=auth(), timeout=10).json()
    assert [item["id"] for item in listed["data"]] == [job_id]
    completed = json.loads(lines[lines.index("event: image_edit.completed") + 1].removeprefix("data: "))
    assert completed["b64_json"] == job["result"]["data"][0]["b64_json"]
    parts = fake_gemini.requests[0].json["contents"][0]["parts"]
    assert [base64.b64decode(p["inline_data"]["data"]) for p in parts if p.get("inline_data")] == [upload]

    def without_keepalives(lines: list[str]) -> list[str]:
        return [line for line in lines if line not in ("", ": keep-alive")]

    assert without_keepalives(events(a, job_id)) == without_keepalives(lines)  # the same stream on A


def test_a_job_posted_to_one_instance_is_cancelled_through_the_other(
    two_instances: tuple[RunningGateway, RunningGateway], fake_gemini: FakeGemini
) -> None:
    a, b = two_instances
    fake_gemini.default_behaviour = Hang(30)
    job_id = submit(a, {"model": MODEL, "prompt": "p"}).json()["id"]
    fake_gemini.wait_for_requests(1)  # running, on one of the two
    cancelled = httpx.post(f"{b.url}/v1/images/jobs/{job_id}/cancel", headers=auth(), timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert events(a, job_id) == []  # a cancelled job's stream just ends, on either
    assert wait_job(a, job_id)["status"] == "cancelled"
    again = httpx.post(f"{a.url}/v1/images/jobs/{job_id}/cancel", headers=auth(), timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_already_finished"
    # The run itself stops too, wherever it was: nothing runs any more on either instance.
    for instance in (a, b):
        runner = instance.server.app.state.gateway.jobs
        wait_until(lambda runner=runner: not runner._runs, "the cancelled run to stop")
