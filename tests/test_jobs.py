"""jobs.py without HTTP: the Prefer header, the store's claims and crash recovery, usage once per
job, a graceful stop. The runner runs in-process against the fake Gemini on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from imagegate.db import Database
from imagegate.gateway import Gateway
from imagegate.jobs import MAX_ATTEMPTS, Job, JobStore, prefers_async
from imagegate.server.job_routes import renderers

from .conftest import API_KEY, RunningGateway, make_settings
from .fakes.gemini import FakeGemini, Hang
from .fakes.images import detect_mime, solid_png

MODEL = "gemini-3-pro-image-preview"
DEAD_PID = f"{socket.gethostname()}:999999999"  # an owner on this host, above pid_max: no such process


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["respond-async"], True),
        (["Respond-Async"], True),
        (["  respond-async  "], True),
        (["wait=10, respond-async"], True),
        (["return=minimal;foo=bar,respond-async;x=1"], True),
        (["wait=10", "respond-async"], True),  # several Prefer headers add up
        (['foo="a, respond-async"'], False),  # inside a quoted value: no preference of its own
        (["respond-async-later"], False),
        (["return=respond-async"], False),  # a value, not the preference's name
        ([""], False),
        ([], False),
    ],
)
def test_prefer_respond_async_is_parsed_as_rfc_7240_says(headers: list[str], expected: bool) -> None:
    assert prefers_async(headers) is expected


def _store(tmp_path: Path) -> JobStore:
    return JobStore(Database(tmp_path / "db.sqlite"), tmp_path / "jobs")


def _add(store: JobStore, key_id: str | None = "k1", images: list[Any] | None = None) -> Job:
    import secrets

    return store.add(
        job_id=f"job_{secrets.token_hex(4)}",
        mode="t2i",
        model=MODEL,
        key_id=key_id,
        request={"params": {"model": MODEL, "prompt": "p"}, "request_id": "req"},
        images=images or [],
        mask=None,
        webhook_url=None,
        max_queued=100,
    )


def test_a_job_interrupted_again_is_failed_on_its_third_start(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = _add(store)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = store.claim(DEAD_PID, concurrency=4, per_key=2)
        assert claimed is not None and claimed.id == job.id and claimed.attempts == attempt
        failed = store.take_back(lambda job_id, owner, heartbeat_at: owner == DEAD_PID)
        if attempt < MAX_ATTEMPTS:
            assert failed == []
            assert store.get(job.id).status == "queued"  # type: ignore[union-attr]
    [ended] = failed
    assert ended.status == "failed" and ended.attempts == MAX_ATTEMPTS and ended.finished_at is not None
    assert ended.error is not None and ended.error["code"] == "job_interrupted"
    assert set(ended.error) == {"message", "type", "param", "code"}
    assert store.claim("me", concurrency=4, per_key=2) is None


def test_a_live_owners_job_is_left_alone(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = _add(store)
    store.claim("1", concurrency=4, per_key=2)
    assert store.take_back(lambda job_id, owner, heartbeat_at: False) == []
    assert store.get(job.id).status == "in_progress"  # type: ignore[union-attr]


def test_claims_respect_the_global_and_the_per_key_limit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a1, a2, b1, c1 = _add(store, "a"), _add(store, "a"), _add(store, "b"), _add(store, "c")
    assert store.claim("me", concurrency=2, per_key=1).id == a1.id  # type: ignore[union-attr]
    assert store.claim("me", concurrency=2, per_key=1).id == b1.id  # type: ignore[union-attr] # a2 skipped
    assert store.claim("me", concurrency=2, per_key=1) is None  # two running: the global limit
    assert store.claim("me", concurrency=3, per_key=1).id == c1.id  # type: ignore[union-attr]
    assert store.get(a2.id).status == "queued"  # type: ignore[union-attr]


def test_uploads_are_kept_as_files_and_read_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = _add(store, images=[b"\x89PNG-bytes", "https://example.com/a.png"])
    assert store.read_inputs(job) == ([b"\x89PNG-bytes", "https://example.com/a.png"], None)
    store.remove_inputs(job.id)
    assert not (tmp_path / "jobs" / job.id / "inputs").exists()


# --- the runner, in-process ------------------------------------------------------------------


def _interrupted_job(gateway: Gateway, *, usage_counted: bool) -> str:
    """A job left in_progress by a process that died, after (or before) its pipeline recorded usage."""
    job = _add(gateway.jobs.store, key_id=None)
    gateway.db.execute(
        "UPDATE jobs SET status = 'in_progress', owner = ?, attempts = 1, started_at = ?, usage_counted = ? "
        "WHERE id = ?",
        (DEAD_PID, time.time(), int(usage_counted), job.id),
    )
    return job.id


async def _run_until_final(gateway: Gateway, job_id: str) -> Job:
    await gateway.jobs.start(renderers())
    try:
        async with asyncio.timeout(20):
            while True:
                job = gateway.jobs.store.get(job_id)
                assert job is not None
                if job.status in ("succeeded", "failed", "cancelled"):
                    return job
                await asyncio.sleep(0.05)
    finally:
        await gateway.jobs.stop()


def test_another_hosts_job_is_taken_back_only_once_its_heartbeat_is_stale(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    settings = make_settings(tmp_path, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)

    async def scenario() -> tuple[Job, Job]:
        async with Gateway(settings) as gateway:
            fresh, stale = (
                _interrupted_job(gateway, usage_counted=False),
                _interrupted_job(gateway, usage_counted=False),
            )
            for job_id, beat in ((fresh, time.time()), (stale, time.time() - 600)):
                gateway.db.execute(
                    "UPDATE jobs SET owner = 'another-host:1', heartbeat_at = ? WHERE id = ?", (beat, job_id)
                )
            done = await _run_until_final(gateway, stale)
            still = gateway.jobs.store.get(fresh)
            assert still is not None
            return done, still

    done, still = asyncio.run(scenario())
    assert done.status == "succeeded" and done.attempts == 2
    assert still.status == "in_progress" and still.owner == "another-host:1"  # its owner may well be alive


def _usage_rows(gateway: Gateway, request_id: str) -> int:
    return int(gateway.db.execute("SELECT COUNT(*) FROM usage WHERE request_id = ?", (request_id,))[0][0])


@pytest.mark.parametrize("usage_counted", [True, False])
def test_a_rerun_counts_usage_once(tmp_path: Path, fake_gemini: FakeGemini, usage_counted: bool) -> None:
    settings = make_settings(
        tmp_path, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, api_keys=""
    )

    async def scenario() -> tuple[Job, int]:
        async with Gateway(settings) as gateway:
            job_id = _interrupted_job(gateway, usage_counted=usage_counted)
            if usage_counted:  # the first run's row, as its pipeline wrote it before the crash
                gateway.db.execute(
                    "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
                    "input_tokens, output_tokens) VALUES ('req', ?, NULL, NULL, ?, 'gemini', 't2i', 1, 0.1, 1, 1)",
                    (time.time(), MODEL),
                )
            job = await _run_until_final(gateway, job_id)
            return job, _usage_rows(gateway, "req")

    job, rows = asyncio.run(scenario())
    assert job.status == "succeeded" and job.attempts == 2
    assert rows == 1  # counted once: by the first run, or by the re-run when the first had not
    assert len(fake_gemini.requests) == 1


def test_a_graceful_stop_queues_running_jobs_again_without_counting_a_start(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    settings = make_settings(tmp_path, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    fake_gemini.enqueue(Hang(30))

    async def scenario() -> Job | None:
        async with Gateway(settings) as gateway:
            job = _add(gateway.jobs.store, key_id=None)
            await gateway.jobs.start(renderers())
            async with asyncio.timeout(20):
                while not fake_gemini.requests:
                    await asyncio.sleep(0.05)
            await gateway.jobs.stop()
            return gateway.jobs.store.get(job.id)

    job = asyncio.run(scenario())
    assert job is not None and (job.status, job.attempts, job.owner) == ("queued", 0, None)


# --- the CLI against a running gateway -------------------------------------------------------


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from imagegate.cli import cli

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_cli_generate_async_then_jobs_wait_get_list_cancel(
    gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    server = ("--server", gateway.url, "--api-key", API_KEY)
    submitted = _cli("generate", "a cat", "--model", MODEL, "--async", *server)
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job_")
    out = tmp_path / "cat.png"
    waited = _cli("jobs", "wait", job_id, *server, "--interval", "0.1", "-o", str(out))
    assert waited.exit_code == 0, waited.stderr
    assert waited.stdout.strip() == str(out) and detect_mime(out.read_bytes()) == "image/png"
    assert "succeeded" in waited.stderr
    got = _cli("jobs", "get", job_id, *server, "--json")
    assert json.loads(got.stdout)["status"] == "succeeded"
    listed = _cli("jobs", "list", *server)
    assert listed.exit_code == 0 and job_id in listed.stdout and "succeeded" in listed.stdout
    cancelled = _cli("jobs", "cancel", job_id, *server)
    assert cancelled.exit_code == 1 and "409" in cancelled.stderr and "job_already_finished" in cancelled.stderr
    assert len(fake_gemini.requests) == 1


def test_cli_edit_async_and_cancel(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    fake_gemini.default_behaviour = Hang(30)
    image = tmp_path / "in.png"
    image.write_bytes(solid_png(32, 32, (0, 90, 200)))
    server = ("--server", gateway.url, "--api-key", API_KEY)
    submitted = _cli("edit", str(image), "--prompt", "p", "--model", MODEL, "--async", *server)
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    fake_gemini.wait_for_requests(1)
    cancelled = _cli("jobs", "cancel", job_id, *server)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    waited = _cli("jobs", "wait", job_id, *server)
    assert waited.exit_code == 1 and "cancelled" in waited.stderr


def test_cli_async_needs_a_server() -> None:
    result = _cli("generate", "a cat", "--async")
    assert result.exit_code == 2 and "--server" in result.stderr


def test_the_finished_hook_sees_each_job_once_in_its_final_state(tmp_path: Path, fake_gemini: FakeGemini) -> None:
    from .fakes.gemini import GeminiError

    settings = make_settings(
        tmp_path, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, job_concurrency=1
    )
    fake_gemini.enqueue(None, GeminiError(500, "INTERNAL", "upstream broke"))
    seen: list[Job] = []

    async def scenario() -> dict[str, str]:
        async with Gateway(settings) as gateway:
            gateway.jobs.on_finished = seen.append
            store = gateway.jobs.store
            ok, failing, dropped = _add(store, None), _add(store, None), _add(store, None)
            interrupted = _interrupted_job(gateway, usage_counted=False)
            gateway.db.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (MAX_ATTEMPTS, interrupted))
            await gateway.jobs.cancel(dropped.id)  # still queued: cancelled at once
            await gateway.jobs.start(renderers())
            try:
                async with asyncio.timeout(20):
                    while len(seen) < 4:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)  # room for a second, wrong call
            finally:
                await gateway.jobs.stop()
            return {ok.id: "succeeded", failing.id: "failed", dropped.id: "cancelled", interrupted: "failed"}

    expected = asyncio.run(scenario())
    assert sorted((job.id, job.status) for job in seen) == sorted(expected.items())
    by_id = {job.id: job for job in seen}
    succeeded = next(job for job in seen if job.status == "succeeded")
    body = succeeded.to_object()
    assert body == json.loads(succeeded.to_json()) and body["result"]["data"]
    assert by_id[[k for k, v in expected.items() if v == "failed"][0]].error is not None


def test_kept_events_go_a_result_ttl_after_the_job_ends(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old, recent, running = _add(store), _add(store), _add(store)
    for job in (old, recent, running):
        store.add_event(job.id, 0, b"event: x\ndata: {}\n\n")
    now = time.time()
    store.db.execute("UPDATE jobs SET status = 'succeeded', finished_at = ? WHERE id = ?", (now - 100, old.id))
    store.db.execute("UPDATE jobs SET status = 'succeeded', finished_at = ? WHERE id = ?", (now - 10, recent.id))
    assert store.purge_expired(ttl_seconds=50) == 1
    assert store.events(old.id) == []
    assert store.events(recent.id) == store.events(running.id) == [b"event: x\ndata: {}\n\n"]
    assert store.get(old.id) is not None  # the job itself is kept
