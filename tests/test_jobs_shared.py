"""Jobs shared between instances: two Gateways (each with its own data dir, as on two hosts) over
one database, in one process. A job submitted on one is run, read, followed and cancelled on the
other; with Redis, wake-ups cross between them at once (tested with every poll made too slow to
matter, so only a wake-up can finish the test); a dead instance's job is taken back by the other.
The upstream is the fake Gemini on loopback; Redis is the real server (tests/backends.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import imagegate.jobs
from imagegate import db as dbm
from imagegate.config import Settings
from imagegate.gateway import Gateway
from imagegate.jobs import Job, JobStore
from imagegate.jobsignals import JobSignals, RedisJobSignals, open_job_signals
from imagegate.pipeline import ImageJob
from imagegate.server.job_routes import follow_events, renderers

from .conftest import make_settings
from .fakes.gemini import FakeGemini, Hang, Streamed
from .fakes.images import solid_png

MODEL = "gemini-3-pro-image-preview"
PARTIAL = b"event: image_edit.partial_image"
COMPLETED = b"event: image_edit.completed"
SLOW = 3600.0  # a poll interval no test waits out: only a wake-up gets past it


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The one database every instance of the test opens (IMAGEGATE_DATABASE_URL): a SQLite file
    outside their data dirs, or a migrated database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_url")
    dbm.migrate(url)
    return url


@pytest.fixture(params=["poll", "redis"])
def wakeups(request: pytest.FixtureRequest) -> str | None:
    """None: no Redis, instances find each other's news by polling; else the Redis URL."""
    if request.param == "poll":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def _settings(tmp_path: Path, name: str, fake_gemini: FakeGemini, database_url: str, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        data_dir=tmp_path / name,
        database_url=database_url,
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        api_keys="",
        **overrides,
    )


def _name(gateway: Gateway, host: str) -> None:
    """Two instances in one process: give each its own host, as on two machines."""
    gateway.jobs.host = host
    gateway.jobs.owner = f"{host}:1"


@contextlib.asynccontextmanager
async def _instances(
    a_settings: Settings, b_settings: Settings, *, runs: str = "ab", slow: bool = False
) -> AsyncIterator[list[Gateway]]:
    """Gateways A and B; those named in `runs` run jobs, the others only answer the API (and
    tell the others what they did, through their signals). `slow`: their followers would wait an
    hour between polls (and so would runners, after `_slow_runners`): what they do, a wake-up did."""
    async with Gateway(a_settings) as a, Gateway(b_settings) as b:
        _name(a, "host-a")
        _name(b, "host-b")
        for gateway, name in ((a, "a"), (b, "b")):
            if slow:
                gateway.jobs.signals.follow_poll_seconds = SLOW
            if name in runs:
                await gateway.jobs.start(renderers())
            else:
                await gateway.jobs.signals.start()
        try:
            yield [a, b]
        finally:
            for gateway, name in ((a, "a"), (b, "b")):
                if name in runs:
                    await gateway.jobs.stop()
                else:
                    await gateway.jobs.signals.aclose()


async def _submit(gateway: Gateway, images: list[bytes] | None = None, **params: Any) -> Job:
    job = ImageJob(
        mode="edit" if images else "t2i",
        params={"model": MODEL, "prompt": "p", **params},
        images=list(images or []),
        request_id=f"req_{secrets.token_hex(6)}",
    )
    return await gateway.jobs.submit(job, await gateway.service.check(job), None)


async def _until(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(20):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _final(gateway: Gateway, job_id: str) -> Job:
    async with asyncio.timeout(20):
        while True:
            job = await asyncio.to_thread(gateway.jobs.store.get, job_id)
            assert job is not None
            if job.status in imagegate.jobs.FINAL:
                return job
            await asyncio.sleep(0.02)


def _slow_runners(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Runners that sweep once at start, then wait an hour for a wake-up: the settings for that."""
    monkeypatch.setattr(imagegate.jobs, "POLL_SECONDS", SLOW)
    return {"job_heartbeat_stale_seconds": 3 * SLOW}  # runners sweep at a third of it at most


# --- two instances over one database --------------------------------------------------------


def test_a_job_submitted_on_one_instance_runs_on_the_other_and_is_followed_live_from_the_first(
    tmp_path: Path,
    database_url: str,
    fake_gemini: FakeGemini,
    wakeups: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    fake_gemini.enqueue(Streamed(thought_images=2, gate=gate))
    upload = solid_png(40, 30, (10, 200, 30))
    # With Redis, B claims the job only if A's submit wakes it; A's follower reads only on B's news.
    slow = _slow_runners(monkeypatch) if wakeups else {}
    settings = [_settings(tmp_path, name, fake_gemini, database_url, redis_url=wakeups, **slow) for name in ("a", "b")]

    async def scenario() -> tuple[Job, list[bytes], list[bytes], str]:
        async with _instances(*settings, runs="b", slow=bool(wakeups)) as (a, b):
            job = await _submit(a, [upload], partial_images=2)
            live: list[bytes] = []
            follower = follow_events(a, job.id, keepalive_seconds=SLOW)
            async with asyncio.timeout(20):
                async for data in follower:
                    live.append(data)
                    if sum(PARTIAL in d for d in live) == 2:
                        break
            # Both partials came while the upstream still holds the answer: followed live.
            running = await asyncio.to_thread(a.jobs.store.get, job.id)
            assert running is not None
            gate.set()
            async with asyncio.timeout(20):
                live.extend([data async for data in follower])
            replayed = [data async for data in follow_events(a, job.id, keepalive_seconds=SLOW)]
            return await _final(a, job.id), live, replayed, f"{running.status} {running.owner}"

    job, live, replayed, running = asyncio.run(scenario())
    assert running == "in_progress host-b:1"
    assert job.status == "succeeded" and job.attempts == 1
    assert any(COMPLETED in data for data in live) and live == replayed
    completed = json.loads(next(d for d in live if COMPLETED in d).split(b"data: ", 1)[1])
    assert completed["b64_json"] == json.loads(job.result or b"")["data"][0]["b64_json"]
    parts = fake_gemini.requests[0].json["contents"][0]["parts"]
    sent = [base64.b64decode(p["inline_data"]["data"]) for p in parts if p.get("inline_data")]
    assert sent == [upload]  # the upload, kept in the database by A, read by B
    assert not (tmp_path / "a" / "jobs").exists() and not (tmp_path / "b" / "jobs").exists()  # no files


def test_a_job_running_on_one_instance_is_cancelled_from_the_other(
    tmp_path: Path,
    database_url: str,
    fake_gemini: FakeGemini,
    wakeups: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_gemini.enqueue(Hang(30))
    # With Redis, A's run stops only if B's cancel wakes it; A's follower likewise.
    slow = _slow_runners(monkeypatch) if wakeups else {}
    settings = [_settings(tmp_path, name, fake_gemini, database_url, redis_url=wakeups, **slow) for name in ("a", "b")]

    async def scenario() -> tuple[Job, Job, list[bytes]]:
        async with _instances(*settings, runs="a", slow=bool(wakeups)) as (a, b):
            job = await _submit(a)
            await _until(lambda: bool(fake_gemini.requests), "the upstream call")
            follower = asyncio.create_task(_collect(follow_events(a, job.id, keepalive_seconds=SLOW)))
            cancelled = await b.jobs.cancel(job.id)
            await _until(lambda: job.id not in a.jobs._runs, "A's run to stop")
            async with asyncio.timeout(20):
                events = await follower
            return cancelled, await _final(a, job.id), events

    cancelled, final, events = asyncio.run(scenario())
    assert cancelled.status == final.status == "cancelled"
    assert final.result is None and events == []  # a cancelled job's stream just ends


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [data async for data in stream]


def test_a_dead_instances_job_is_taken_back_by_another_host_once_its_heartbeat_is_stale(
    tmp_path: Path, database_url: str, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gemini.enqueue(Hang(30))
    settings = [
        _settings(tmp_path, name, fake_gemini, database_url, job_heartbeat_stale_seconds=0.5) for name in ("a", "b")
    ]

    async def scenario() -> tuple[Job, Job, int]:
        async with Gateway(settings[0]) as a, Gateway(settings[1]) as b:
            _name(a, "host-a")
            _name(b, "host-b")
            await a.jobs.start(renderers())
            job = await _submit(a)
            await _until(lambda: bool(fake_gemini.requests), "A's upstream call")
            # A dies as a kill -9 would leave it: no heartbeat any more, nothing queued again.
            monkeypatch.setattr(a.jobs.store, "requeue", lambda job_id, owner: None)
            assert a.jobs._loop_task is not None
            a.jobs._loop_task.cancel()
            runs = [run.task for run in a.jobs._runs.values() if run.task is not None]
            for task in runs:
                task.cancel()
            await asyncio.gather(*runs, a.jobs._loop_task, return_exceptions=True)
            orphan = await asyncio.to_thread(b.jobs.store.get, job.id)
            assert orphan is not None
            await b.jobs.start(renderers())
            try:
                done = await _final(b, job.id)
            finally:
                await b.jobs.stop()
            rows = b.db.execute("SELECT COUNT(*) FROM usage WHERE request_id = ?", (job.request_id,))
            return orphan, done, int(rows[0][0])

    orphan, done, usage_rows = asyncio.run(scenario())
    assert (orphan.status, orphan.owner, orphan.attempts) == ("in_progress", "host-a:1", 1)
    assert done.status == "succeeded" and done.attempts == 2 and done.result is not None
    assert len(fake_gemini.requests) == 2 and usage_rows == 1  # the lost run paid nothing: one record


def test_a_rerun_on_another_host_does_not_count_usage_the_first_run_recorded(
    tmp_path: Path, database_url: str, fake_gemini: FakeGemini
) -> None:
    settings = _settings(tmp_path, "b", fake_gemini, database_url, job_heartbeat_stale_seconds=5)

    async def scenario() -> tuple[Job, int]:
        async with Gateway(settings) as b:
            _name(b, "host-b")
            store = b.jobs.store
            job = store.add(
                job_id="job_counted",
                mode="t2i",
                model=MODEL,
                key_id=None,
                request={"params": {"model": MODEL, "prompt": "p"}, "request_id": "req_counted"},
                images=[],
                mask=None,
                webhook_url=None,
                max_queued=10,
            )
            # Host A ran it, its pipeline recorded usage, then A went silent a minute ago.
            b.db.execute(
                "UPDATE jobs SET status = 'in_progress', owner = 'host-a:7', attempts = 1, started_at = ?, "
                "heartbeat_at = ?, usage_counted = 1 WHERE id = ?",
                (time.time() - 60, time.time() - 60, job.id),
            )
            b.db.execute(
                "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
                "input_tokens, output_tokens) VALUES ('req_counted', ?, NULL, NULL, ?, 'gemini', 't2i', 1, 0.1, 1, 1)",
                (time.time(), MODEL),
            )
            await b.jobs.start(renderers())
            try:
                done = await _final(b, job.id)
            finally:
                await b.jobs.stop()
            rows = b.db.execute("SELECT COUNT(*) FROM usage WHERE request_id = 'req_counted'")
            return done, int(rows[0][0])

    done, rows = asyncio.run(scenario())
    assert done.status == "succeeded" and done.attempts == 2
    assert rows == 1 and len(fake_gemini.requests) == 1


def test_another_hosts_heartbeat_is_judged_by_the_configured_stale_time(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        async with Gateway(make_settings(tmp_path, job_heartbeat_stale_seconds=100)) as gateway:
            now = time.time()
            is_dead = gateway.jobs._is_dead
            return [is_dead("j", "elsewhere:1", now - 50), is_dead("j", "elsewhere:1", now - 150)]

    assert asyncio.run(scenario()) == [False, True]  # 50 s of silence is not dead at 100 s; 150 s is


def test_two_runners_of_one_process_leave_each_others_jobs_alone(tmp_path: Path, database_url: str) -> None:
    """Same host, same pid: the runner token tells them apart, and the heartbeat decides (as it does
    for a pid that an earlier, crashed process had)."""

    async def scenario() -> tuple[bool, bool, bool]:
        async with Gateway(make_settings(tmp_path, data_dir=tmp_path / "a", database_url=database_url)) as a:
            async with Gateway(make_settings(tmp_path, data_dir=tmp_path / "b", database_url=database_url)) as b:
                assert a.jobs.owner != b.jobs.owner
                now = time.time()
                return (
                    b.jobs._is_dead("j", a.jobs.owner, now),
                    b.jobs._is_dead("j", a.jobs.owner, now - 3600),  # its heartbeat stopped long ago
                    b.jobs._is_dead("j", f"{b.jobs.host}:999999999:feed", now),  # that pid is gone
                )

    assert asyncio.run(scenario()) == (False, True, True)


# --- the store: inputs and events as rows ---------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, database_url: str) -> Iterator[JobStore]:
    db = dbm.open_database(Settings(data_dir=tmp_path / "data", database_url=database_url))
    yield JobStore(db, tmp_path / "jobs")
    db.close()


def _add(store: JobStore, images: list[Any] | None = None, mask: Any = None) -> Job:
    return store.add(
        job_id=f"job_{secrets.token_hex(4)}",
        mode="edit",
        model=MODEL,
        key_id=None,
        request={"params": {"model": MODEL, "prompt": "p"}, "request_id": "req"},
        images=images or [],
        mask=mask,
        webhook_url=None,
        max_queued=100,
    )


def test_uploads_are_rows_committed_with_the_job_and_removed_when_it_ends(store: JobStore, tmp_path: Path) -> None:
    job = _add(store, images=[b"first", "https://example.com/b.png", b"third"], mask=b"mask-bytes")
    rows = store.db.execute("SELECT name, data FROM job_inputs WHERE job_id = ? ORDER BY name", (job.id,))
    assert [(name, bytes(data)) for name, data in rows] == [
        ("image-0", b"first"),
        ("image-2", b"third"),
        ("mask", b"mask-bytes"),
    ]
    assert not (tmp_path / "jobs").exists()  # nothing on this instance's disk
    png = store.add(
        job_id="job_png",
        mode="edit",
        model=MODEL,
        key_id=None,
        request={"params": {}},
        images=[solid_png(4, 4, (1, 2, 3))],
        mask=None,
        webhook_url=None,
        max_queued=100,
    )
    types = store.db.execute("SELECT job_id, content_type FROM job_inputs WHERE name = 'image-0' ORDER BY job_id")
    assert sorted((row[0], row[1]) for row in types) == sorted([(job.id, None), (png.id, "image/png")])
    other = JobStore(store.db)  # another instance: no data dir of ours at all
    assert other.read_inputs(job) == ([b"first", "https://example.com/b.png", b"third"], b"mask-bytes")
    other.remove_inputs(job.id)
    assert [row[0] for row in store.db.execute("SELECT job_id FROM job_inputs")] == [png.id]


def test_a_full_queue_keeps_no_uploads(store: JobStore) -> None:
    from imagegate.errors import JobQueueFull

    _add(store)
    with pytest.raises(JobQueueFull):
        store.add(
            job_id="job_refused",
            mode="edit",
            model=MODEL,
            key_id=None,
            request={"params": {}},
            images=[b"x"],
            mask=None,
            webhook_url=None,
            max_queued=1,
        )
    assert store.db.execute("SELECT COUNT(*) FROM job_inputs WHERE job_id = 'job_refused'")[0][0] == 0
    assert store.get("job_refused") is None


def test_a_queued_job_of_an_older_version_reads_its_files(store: JobStore, tmp_path: Path) -> None:
    """Before, uploads were files under <data dir>/jobs/<id>/inputs, named in `request`."""
    request = {"params": {"model": MODEL, "prompt": "p"}, "images": [{"file": "image-0"}], "mask": {"file": "mask"}}
    store.db.execute(
        "INSERT INTO jobs (id, status, model, mode, request, created_at) VALUES ('job_old', 'queued', ?, 'edit', ?, ?)",
        (MODEL, json.dumps(request), time.time()),
    )
    inputs = tmp_path / "jobs" / "job_old" / "inputs"
    inputs.mkdir(parents=True)
    (inputs / "image-0").write_bytes(b"old-image")
    (inputs / "mask").write_bytes(b"old-mask")
    job = store.get("job_old")
    assert job is not None
    assert store.read_inputs(job) == ([b"old-image"], b"old-mask")
    store.remove_inputs(job.id)
    assert not inputs.exists()


def test_a_finished_job_of_an_older_version_replays_its_event_files(store: JobStore, tmp_path: Path) -> None:
    job = _add(store)
    events = tmp_path / "jobs" / job.id / "events"
    events.mkdir(parents=True)
    for seq, data in enumerate([b"event: a\n\n", b"event: b\n\n"]):
        (events / f"{seq:06d}.sse").write_bytes(data)
    assert store.events(job.id) == [b"event: a\n\n", b"event: b\n\n"]
    store.db.execute("UPDATE jobs SET status = 'succeeded', finished_at = ? WHERE id = ?", (time.time() - 100, job.id))
    assert store.purge_expired(ttl_seconds=50) == 1
    assert not (tmp_path / "jobs" / job.id).exists() and store.events(job.id) == []


def test_an_upload_that_is_gone_fails_the_job_with_an_openai_error(store: JobStore) -> None:
    from imagegate.errors import ImagegateError

    job = _add(store, images=[b"x"])
    store.remove_inputs(job.id)
    with pytest.raises(ImagegateError, match="no longer kept"):
        store.read_inputs(job)


def test_events_are_rows_in_order_and_an_owner_taken_for_dead_adds_none(store: JobStore) -> None:
    job = _add(store)
    assert store.claim("host-a:1", concurrency=4, per_key=4) is not None
    assert store.add_event(job.id, 0, b"first", owner="host-a:1")
    # host-a is taken for dead; host-b runs the job again from a fresh stream.
    store.take_back(lambda job_id, owner, heartbeat_at: owner == "host-a:1")
    store.clear_events(job.id)
    assert store.claim("host-b:1", concurrency=4, per_key=4) is not None
    assert store.add_event(job.id, 0, b"b0", owner="host-b:1")
    assert not store.add_event(job.id, 1, b"late a", owner="host-a:1")  # still alive after all: ignored
    assert store.add_event(job.id, 1, b"b1", owner="host-b:1")
    assert store.event_rows(job.id) == [(0, b"b0"), (1, b"b1")]
    assert store.event_rows(job.id, 1) == [(1, b"b1")]
    store.finish(job.id, "host-b:1", "succeeded", finished_at=time.time(), result=b"{}")
    assert not store.add_event(job.id, 2, b"after the end", owner="host-b:1")


def test_purge_removes_kept_events_and_leftover_inputs_a_ttl_after_the_end(store: JobStore) -> None:
    old, recent = _add(store, images=[b"x"]), _add(store, images=[b"y"])
    for job in (old, recent):
        store.add_event(job.id, 0, b"event")
    now = time.time()
    store.db.execute("UPDATE jobs SET status = 'failed', finished_at = ? WHERE id = ?", (now - 100, old.id))
    store.db.execute("UPDATE jobs SET status = 'failed', finished_at = ? WHERE id = ?", (now - 10, recent.id))
    assert store.purge_expired(ttl_seconds=50) == 1
    assert store.events(old.id) == [] and store.events(recent.id) == [b"event"]
    left = store.db.execute("SELECT job_id FROM job_inputs")
    assert [row[0] for row in left] == [recent.id]


# --- the signals themselves -----------------------------------------------------------------


def test_without_redis_signals_stay_in_the_process() -> None:
    signals = open_job_signals(None)
    assert type(signals) is JobSignals
    heard: list[str | None] = []
    signals.add_listener(heard.append)

    async def scenario() -> bool:
        watched = signals.watch("job_1")
        signals.changed("job_1")
        signals.queued()
        return watched.is_set()

    assert asyncio.run(scenario()) is True
    assert heard == []  # its own news is not news to its own listeners


def test_redis_signals_reach_the_other_instance_and_not_the_sender(redis_url: str) -> None:
    async def scenario() -> dict[str, Any]:
        a, b = RedisJobSignals(redis_url), RedisJobSignals(redis_url)
        other_db = RedisJobSignals(redis_url.rsplit("/", 1)[0] + "/" + str(int(redis_url.rsplit("/", 1)[1]) % 63 + 1))
        heard: dict[str, list[str | None]] = {"a": [], "b": [], "other": []}
        for name, signals in (("a", a), ("b", b), ("other", other_db)):
            signals.add_listener(heard[name].append)
            await signals.start()
        try:
            watched = b.watch("job_1")
            a.changed("job_1")
            async with asyncio.timeout(10):
                await watched.wait()
            a.queued()
            await _until(lambda: None in heard["b"], "B to hear the submit")
            b.changed("job_2")
            await _until(lambda: "job_2" in heard["a"], "A to hear B")
            return {**heard, "received": (a.received, b.received, other_db.received)}
        finally:
            for signals in (a, b, other_db):
                await signals.aclose()

    result = asyncio.run(scenario())
    assert result["b"] == ["job_1", None] and result["a"] == ["job_2"]
    assert result["other"] == [] and result["received"] == (1, 2, 0)  # another Redis db number: other gateways


def test_a_broken_subscription_subscribes_again_and_wakes_every_follower(redis_url: str) -> None:
    """Messages published while a subscriber was cut off are lost: when it is back, everyone it
    serves looks again, news or not."""
    import redis

    async def scenario() -> tuple[bool, list[str | None], int]:
        signals = RedisJobSignals(redis_url)
        heard: list[str | None] = []
        signals.add_listener(heard.append)
        await signals.start()
        try:
            watched = signals.watch("job_1")
            admin = redis.Redis.from_url(redis_url)
            try:
                killed = int(admin.client_kill_filter(_type="pubsub"))
            finally:
                admin.close()
            async with asyncio.timeout(20):
                await watched.wait()
            return watched.is_set(), heard, killed
        finally:
            await signals.aclose()

    woken, heard, killed = asyncio.run(scenario())
    assert killed >= 1 and woken and heard == [None]


def test_pages_of_a_keys_jobs_on_every_backend(store: JobStore) -> None:
    mine = [
        store.add(
            job_id=f"job_{i}",
            mode="t2i",
            model=MODEL,
            key_id="k1" if i != 1 else "k2",
            request={"params": {}},
            images=[],
            mask=None,
            webhook_url=None,
            max_queued=10,
        )
        for i in range(4)
    ]
    first = store.page("k1", limit=2)
    assert first is not None and [job.id for job in first[0]] == ["job_3", "job_2"] and first[1] is True
    rest = store.page("k1", limit=2, after="job_2")
    assert rest is not None and [job.id for job in rest[0]] == ["job_0"] and rest[1] is False
    assert store.page("k1", limit=2, after="job_1") is None  # another key's job is no cursor of ours
    everyone = store.page(None, limit=10, after="job_1")
    assert everyone is not None and [job.id for job in everyone[0]] == ["job_0"] and len(mine) == 4


def test_without_a_reachable_redis_jobs_still_run_and_are_followed(
    tmp_path: Path, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Wake-ups are hints: with Redis down, an instance runs and streams its jobs as without it."""
    from imagegate import jobsignals

    from .backends import free_port

    monkeypatch.setattr(jobsignals, "SUBSCRIBE_WAIT_SECONDS", 0.2)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = _settings(tmp_path, "a", fake_gemini, f"sqlite:///{tmp_path / 'a.db'}", redis_url=url)

    async def scenario() -> tuple[Job, list[bytes]]:
        async with Gateway(settings) as gateway:
            await gateway.jobs.start(renderers())
            try:
                job = await _submit(gateway)
                async with asyncio.timeout(20):
                    events = await _collect(follow_events(gateway, job.id, keepalive_seconds=SLOW))
                return await _final(gateway, job.id), events
            finally:
                await gateway.jobs.stop()

    job, events = asyncio.run(scenario())
    assert job.status == "succeeded" and any(b"event: image_generation.completed" in data for data in events)
    assert "no Redis subscription yet" in caplog.text
