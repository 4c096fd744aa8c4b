"""WebhookSender against a real receiver on loopback: headers, body and signature as the
`standardwebhooks` package verifies them; retries on 500 and on a timeout; giving up (max age,
410); resuming after a restart; the SSRF guard at delivery; a stored key's own secret; and the
server's lifespan starting the sender."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from imagegate.config import Settings
from imagegate.db import Database
from imagegate.gateway import Gateway
from imagegate.keys import KeyStore
from imagegate.webhooks import WebhookSender, event_body, generate_secret

from ..fakes.webhook_receiver import HANG, Slow, WebhookReceiver

SECRET = generate_secret()
JOB = {"id": "job_1", "object": "image.job", "status": "succeeded", "finished_at": 1764000000, "result": {"data": []}}
BODY = event_body(JOB)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "db.sqlite")
    yield database
    database.close()


@pytest.fixture
async def senders(db: Database) -> AsyncIterator[Callable[..., WebhookSender]]:
    """senders(**options) -> a WebhookSender on the test's database (loopback allowed unless
    said otherwise, quick retries); each is closed after the test."""
    made: list[WebhookSender] = []

    def make(**options: Any) -> WebhookSender:
        options = {"allow_private": True, "timeout_seconds": 2.0, "base_delay_seconds": 0.05, **options}
        made.append(WebhookSender(db, **options))
        return made[-1]

    yield make
    for sender in made:  # those a failing test left running
        await sender.aclose()


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `condition()` every 20 ms until it is truthy (its value), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
    return value


def ended(sender: WebhookSender, job_id: str = "job_1") -> Callable[[], dict[str, Any] | None]:
    """A condition: the job's delivery status once it was delivered or given up."""

    def check() -> dict[str, Any] | None:
        row = sender.db.execute("SELECT next_attempt_at FROM webhook_deliveries WHERE job_id = ?", (job_id,))
        return sender.delivery_status(job_id) if row and row[0][0] is None else None

    return check


def verified(request: Any, secret: str = SECRET) -> Any:
    return Webhook(secret).verify(request.body, request.headers)


async def running(sender: WebhookSender, work: Callable[[], Awaitable[Any]]) -> Any:
    await sender.start()
    try:
        return await work()
    finally:
        await sender.aclose()


# --- delivery -------------------------------------------------------------------------------------


async def test_a_delivery_carries_the_standard_headers_and_the_body(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    sender = senders()
    await sender.start()
    try:
        before = int(time.time())
        msg_id = await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(ended(sender))
    finally:
        await sender.aclose()
    [request] = receiver.received
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == msg_id
    assert before <= int(request.headers["webhook-timestamp"]) <= int(time.time())  # this attempt's time, seconds
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.body == BODY
    assert verified(request) == {"type": "image.job.succeeded", "timestamp": "2025-11-24T16:00:00.000000Z", "data": JOB}
    assert status["url"] == receiver.url and status["attempts"] == 1
    assert (status["last_status"], status["last_error"]) == (200, None)
    assert isinstance(status["delivered_at"], int) and status["delivered_at"] >= before


async def test_a_job_is_delivered_once_however_often_it_is_enqueued(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    sender = senders()
    first = await sender.enqueue("job_1", receiver.url, SECRET, BODY)
    again = await sender.enqueue("job_1", receiver.url, SECRET, BODY)  # e.g. a job runner resumed after a crash
    assert again == first
    status = await running(sender, lambda: until(ended(sender)))
    assert status["attempts"] == 1 and [r.headers["webhook-id"] for r in receiver.received] == [first]


async def test_enqueue_soon_from_sync_code_is_recorded_and_delivered(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    """A job runner's synchronous finished hook records the delivery without awaiting it; a
    shutdown right after still has it recorded, and the next sender delivers it."""
    first = senders()
    first.enqueue_soon("job_1", receiver.url, SECRET, BODY)
    await first.aclose()  # before the insert task had a chance to run
    assert first.delivery_status("job_1") == {
        "url": receiver.url,
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
    }
    second = senders()
    status = await running(second, lambda: until(ended(second)))
    assert status["last_status"] == 200 and verified(receiver.received[0])["data"] == JOB
    with pytest.raises(ValueError, match="whsec_"):
        second.enqueue_soon("job_2", receiver.url, "not-a-secret", BODY)


async def test_no_webhook_no_status(senders: Callable[..., WebhookSender]) -> None:
    assert senders().delivery_status("job_without_webhook") is None


async def test_500s_are_retried_with_the_same_id_until_success(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    receiver.script = [500, 500]
    sender = senders()
    await sender.start()
    try:
        msg_id = await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(ended(sender))
    finally:
        await sender.aclose()
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {msg_id}  # stable across retries
    for request in receiver.received:  # each attempt signed afresh, with its own timestamp
        assert verified(request)["data"] == JOB
    assert status["attempts"] == 3 and status["last_status"] == 200 and status["delivered_at"] is not None


async def test_a_failure_is_recorded_and_retried_later(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    receiver.script = [(503, 30)]  # Retry-After: 30 s, far above the 0.05 s base delay
    sender = senders()
    await sender.start()
    try:
        started = time.time()
        await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(lambda: (s := sender.delivery_status("job_1")) and s["attempts"] == 1 and s)
        [(next_attempt_at,)] = sender.db.execute("SELECT next_attempt_at FROM webhook_deliveries")
    finally:
        await sender.aclose()
    assert status == {
        "url": receiver.url,
        "attempts": 1,
        "last_status": 503,
        "last_error": "HTTP 503",
        "delivered_at": None,
    }
    assert next_attempt_at >= started + 30  # the receiver's Retry-After is a floor on the backoff
    assert len(receiver.received) == 1


async def test_a_timeout_is_retried(senders: Callable[..., WebhookSender], receiver: WebhookReceiver) -> None:
    receiver.script = [HANG]
    sender = senders(timeout_seconds=0.5)
    await sender.start()
    try:
        await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(ended(sender))
    finally:
        await sender.aclose()
    assert len(receiver.received) == 2
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]
    assert status["attempts"] == 2 and status["last_status"] == 200


async def test_a_slow_answer_within_the_timeout_is_a_delivery(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    """The attempt's limit is IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS, not httpx's 5 s default."""
    receiver.script = [Slow(5.5)]
    sender = senders(timeout_seconds=9.0)
    await sender.enqueue("job_1", receiver.url, SECRET, BODY)
    status = await running(sender, lambda: until(ended(sender), timeout=15))
    assert (status["attempts"], status["last_status"]) == (1, 200)


async def test_a_receiver_that_never_answers_is_recorded_as_timing_out(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    receiver.script = [HANG]
    sender = senders(timeout_seconds=0.3, base_delay_seconds=60)
    await sender.start()
    try:
        await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(lambda: (s := sender.delivery_status("job_1")) and s["attempts"] == 1 and s)
    finally:
        await sender.aclose()
    assert status["last_status"] is None and status["last_error"] == "no answer within 0.3 s"


async def test_delivery_gives_up_after_the_max_age(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    receiver.script = [500] * 1000
    sender = senders(max_age_seconds=0.5)
    await sender.start()
    try:
        await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(ended(sender))
        [(given_up_at,)] = sender.db.execute("SELECT given_up_at FROM webhook_deliveries")
    finally:
        await sender.aclose()
    assert status["attempts"] >= 2 and status["attempts"] == len(receiver.received)
    assert status["last_status"] == 500 and status["last_error"] == "gave up after 0.5 s: HTTP 500"
    assert status["delivered_at"] is None and given_up_at is not None


async def test_410_gone_stops_at_once(senders: Callable[..., WebhookSender], receiver: WebhookReceiver) -> None:
    receiver.script = [410]
    sender = senders()
    await sender.start()
    try:
        await sender.enqueue("job_1", receiver.url, SECRET, BODY)
        status = await until(ended(sender))
    finally:
        await sender.aclose()
    assert len(receiver.received) == 1
    assert (status["attempts"], status["last_status"], status["delivered_at"]) == (1, 410, None)


async def test_with_every_slot_taken_the_loop_waits_instead_of_spinning(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot, held by a hanging receiver while a second delivery is due: the loop sleeps until
    the attempt ends, and then makes the second delivery."""
    receiver.script = [HANG]
    sender = senders(concurrency=1, timeout_seconds=0.5)
    claims: list[float] = []
    claim = sender._claim_due

    def counted(now: float, limit: int) -> Any:
        claims.append(now)
        return claim(now, limit)

    monkeypatch.setattr(sender, "_claim_due", counted)
    await sender.enqueue("job_1", receiver.url, SECRET, BODY)
    await sender.enqueue("job_2", receiver.url, SECRET, BODY)
    await sender.start()
    try:
        await until(ended(sender, "job_1"))
        await until(ended(sender, "job_2"))
    finally:
        await sender.aclose()
    assert len(receiver.received) == 3  # job_1 hung, then job_2 and job_1's retry
    assert len(claims) < 20  # a spinning loop claims thousands of times while the slot is held


# --- restarts -------------------------------------------------------------------------------------


async def test_a_delivery_recorded_while_no_sender_runs_is_made_at_start(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    """The job ended, its delivery was recorded, and the process died before sending anything."""
    dead = senders()
    msg_id = await dead.enqueue("job_1", receiver.url, SECRET, BODY)
    await dead.aclose()
    assert receiver.received == []
    fresh = senders()
    status = await running(fresh, lambda: until(ended(fresh)))
    assert status["attempts"] == 1 and status["last_status"] == 200
    assert receiver.received[0].headers["webhook-id"] == msg_id


async def test_a_retry_pending_at_shutdown_resumes_in_the_next_sender(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    receiver.script = [500]
    first = senders(base_delay_seconds=2.0)
    await first.start()
    await first.enqueue("job_1", receiver.url, SECRET, BODY)
    await until(lambda: (s := first.delivery_status("job_1")) and s["attempts"] == 1)
    await first.aclose()  # stopped while the retry waits
    second = senders(base_delay_seconds=2.0)
    status = await running(second, lambda: until(ended(second)))
    assert status["attempts"] == 2 and status["last_status"] == 200  # the count carried over
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1 and len(receiver.received) == 2


async def test_an_attempt_cut_by_shutdown_is_made_again_at_the_next_start(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    """Stopped mid-attempt, the sender releases its lease (else the next start would wait the
    attempt's timeout plus the lease slack, 35 s here, before trying again)."""
    receiver.script = [HANG]
    first = senders(timeout_seconds=5.0)
    await first.start()
    msg_id = await first.enqueue("job_1", receiver.url, SECRET, BODY)
    await until(lambda: receiver.received)
    await first.aclose()
    assert first.delivery_status("job_1")["attempts"] == 0  # type: ignore[index]  # cut, not recorded
    second = senders(timeout_seconds=5.0)
    status = await running(second, lambda: until(ended(second)))
    assert status["attempts"] == 1 and [r.headers["webhook-id"] for r in receiver.received] == [msg_id, msg_id]


async def test_a_dead_owners_lease_runs_out_and_the_delivery_is_taken_over(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver, db: Database
) -> None:
    """A process killed mid-attempt leaves its lease on the row; another sender waits it out."""
    await senders().enqueue("job_1", receiver.url, SECRET, BODY)
    db.execute("UPDATE webhook_deliveries SET lease_until = ?", (time.time() + 0.5,))
    survivor = senders()
    status = await running(survivor, lambda: until(ended(survivor)))
    assert status["attempts"] == 1 and len(receiver.received) == 1


async def test_two_processes_on_one_database_deliver_each_webhook_once(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """`serve --workers 2`: each worker's sender claims rows under the database's write lock."""
    other_db = Database(tmp_path / "db.sqlite")  # the second worker's own connection
    try:
        mine, theirs = senders(), WebhookSender(other_db, allow_private=True, base_delay_seconds=0.05)
        ids = [await mine.enqueue(f"job_{i}", receiver.url, SECRET, BODY) for i in range(12)]
        await asyncio.gather(mine.start(), theirs.start())
        try:
            await until(lambda: all(ended(mine, f"job_{i}")() for i in range(12)))
        finally:
            await theirs.aclose()
    finally:
        other_db.close()
    assert sorted(r.headers["webhook-id"] for r in receiver.received) == sorted(ids)


# --- SSRF -----------------------------------------------------------------------------------------


async def test_a_loopback_url_is_refused_at_delivery_without_allow_private(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    sender = senders(allow_private=False)
    await sender.enqueue("job_1", receiver.url, SECRET, BODY)  # e.g. accepted by a gateway that allowed it then
    status = await running(sender, lambda: until(ended(sender)))
    assert receiver.received == []
    assert status["attempts"] == 1 and status["last_status"] is None and "not allowed" in status["last_error"]


async def test_a_name_resolving_to_loopback_is_refused_without_allow_private(
    senders: Callable[..., WebhookSender], receiver: WebhookReceiver
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "hooks.example.com" else []

    url = f"http://hooks.example.com:{receiver.port}/hook"
    refused = senders(allow_private=False, resolver=resolver)
    await refused.enqueue("job_1", url, SECRET, BODY)
    status = await running(refused, lambda: until(ended(refused)))
    assert receiver.received == []
    assert status["last_error"] == "'hooks.example.com' resolves to a non-public address; not allowed"

    # The same name with private addresses allowed reaches the receiver: the guard refused it above.
    allowed = senders(allow_private=True, resolver=resolver)
    await allowed.enqueue("job_2", url, SECRET, BODY)
    status = await running(allowed, lambda: until(ended(allowed, "job_2")))
    assert status["last_status"] == 200
    assert receiver.received[0].headers["host"] == f"hooks.example.com:{receiver.port}"


# --- secrets and the server -----------------------------------------------------------------------


async def test_a_stored_keys_deliveries_are_signed_with_its_own_secret(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    settings = Settings(data_dir=tmp_path / "gw", webhook_secret=SECRET, allow_private_urls=True)
    gateway = Gateway(settings)
    try:
        record, _ = KeyStore(gateway.db).create("tenant")  # as `imagegate keys create` does
        key_secret = gateway.webhook_secret(record.id)
        assert key_secret is not None and key_secret != SECRET
        assert gateway.webhook_secret("static-0123456789ab") == SECRET  # static keys: IMAGEGATE_WEBHOOK_SECRET
        assert gateway.webhook_secret(None) == SECRET  # a gateway without keys
        await gateway.webhooks.start()
        await gateway.webhooks.enqueue("job_1", receiver.url, key_secret, BODY)
        await until(ended(gateway.webhooks))
    finally:
        await gateway.aclose()
    [request] = receiver.received
    assert verified(request, key_secret)["data"] == JOB
    with pytest.raises(Exception, match="signature"):
        verified(request, SECRET)


def test_the_server_resumes_pending_deliveries_at_start(
    gateway_factory: Callable[..., Any], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Recorded by a gateway process that died; the next `imagegate serve` on the data dir sends it."""
    db = Database(tmp_path / "data" / "imagegate.db")  # the data dir make_settings gives the gateway
    try:
        asyncio.run(WebhookSender(db, allow_private=True).enqueue("job_1", receiver.url, SECRET, BODY))
    finally:
        db.close()
    gateway_factory()
    [request] = receiver.wait_for(1)
    assert verified(request)["data"] == JOB


def test_the_server_applies_allow_private_urls_to_webhooks(
    gateway_factory: Callable[..., Any], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    db = Database(tmp_path / "data" / "imagegate.db")
    try:
        asyncio.run(WebhookSender(db, allow_private=True).enqueue("job_1", receiver.url, SECRET, BODY))
        gateway_factory(allow_private_urls=False)
        deadline = time.monotonic() + 10
        while not db.execute("SELECT 1 FROM webhook_deliveries WHERE given_up_at IS NOT NULL"):
            assert time.monotonic() < deadline, "the delivery was neither made nor refused"
            time.sleep(0.02)
        [(error,)] = db.execute("SELECT last_error FROM webhook_deliveries")
    finally:
        db.close()
    assert receiver.received == [] and "not allowed" in error
