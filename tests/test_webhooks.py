"""imagegate.webhooks without the network: signatures checked by the independent `standardwebhooks`
package (the Standard Webhooks team's own Python library), event bodies, secrets, the submit-time
URL check, the backoff, per-key secrets from `imagegate keys create`, and the startup check of
IMAGEGATE_WEBHOOK_SECRET."""

from __future__ import annotations

import base64
import json
import random
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook, WebhookVerificationError

from imagegate import webhooks
from imagegate.cli import cli
from imagegate.config import Settings
from imagegate.db import Database
from imagegate.errors import InvalidRequest
from imagegate.keys import KeyStore
from imagegate.webhooks import (
    WebhookSender,
    check_webhook_url,
    event_body,
    generate_secret,
    require_secret,
    secret_key,
    sign,
)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
# Non-ASCII on purpose: the body is UTF-8 JSON (orjson), and the signature covers those exact bytes.
JOB = {
    "id": "job_abc",
    "object": "image.job",
    "status": "succeeded",
    "finished_at": 1764000000,
    "result": {"data": [{"revised_prompt": "a café at dusk ☕"}]},
}


def headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


# --- signatures -----------------------------------------------------------------------------------


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    body = event_body(JOB)
    now = int(time.time())
    signature = sign(SECRET, "msg_1", now, body)
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", signature)  # 32 bytes of HMAC-SHA256, base64
    parsed = Webhook(SECRET).verify(body, headers("msg_1", now, signature))
    assert parsed["data"] == JOB


def test_signature_matches_the_packages_own_for_any_secret() -> None:
    """Not one lucky vector: fresh secrets, ids and bodies agree with the package's signer."""
    for _ in range(20):
        secret = generate_secret()
        body = json.dumps({"n": random.random(), "text": "é ✓"}).encode()
        msg_id = "msg_" + str(random.randrange(10**9))
        ts = int(time.time())
        assert (
            Webhook(secret).verify(body, headers(msg_id, ts, sign(secret, msg_id, ts, body)), json_parse=False) is None
        )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"succeeded", b"failed")),  # the body
        lambda h, b: ({**h, "webhook-id": "msg_2"}, b),  # the id
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),  # the timestamp
    ],
    ids=["body", "id", "timestamp"],
)
def test_a_tampered_message_fails_verification(tamper: object) -> None:
    body = event_body(JOB)
    now = int(time.time())
    good = headers("msg_1", now, sign(SECRET, "msg_1", now, body))
    bad_headers, bad_body = tamper(good, body)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(bad_body, bad_headers)


def test_an_old_timestamp_fails_verification() -> None:
    """A replayed message: validly signed, but ten minutes old (the package allows five)."""
    body = event_body(JOB)
    old = int(time.time()) - 600
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, headers("msg_1", old, sign(SECRET, "msg_1", old, body)))


def test_another_secret_fails_verification() -> None:
    body = event_body(JOB)
    now = int(time.time())
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers("msg_1", now, sign(SECRET, "msg_1", now, body)))


# --- secrets --------------------------------------------------------------------------------------


def test_generated_secrets_are_whsec_base64_of_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(secret_key(first)) == 32


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "whsec_"),  # no prefix
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24 to 64"),  # too short for the spec
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64"),
    ],
)
def test_malformed_secrets_are_refused(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        secret_key(secret)


def test_a_malformed_webhook_secret_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_WEBHOOK_SECRET", "hunter2")
    with pytest.raises(ValueError, match="IMAGEGATE_WEBHOOK_SECRET: a webhook secret must look like whsec_"):
        Settings()
    monkeypatch.setenv("IMAGEGATE_WEBHOOK_SECRET", SECRET)
    assert Settings().webhook_secret == SECRET


def test_keys_secret_prints_a_usable_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["keys", "secret"], catch_exceptions=False)
    assert result.exit_code == 0
    secret = result.stdout.strip()
    monkeypatch.setenv("IMAGEGATE_WEBHOOK_SECRET", secret)
    assert Settings().webhook_secret == secret


# --- event bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_event_body_shape(status: str) -> None:
    job = {**JOB, "status": status}
    body = json.loads(event_body(job))
    assert body == {"type": f"image.job.{status}", "timestamp": "2025-11-24T16:00:00.000000Z", "data": job}


def test_event_body_without_finished_at_is_stamped_now() -> None:
    body = json.loads(event_body({"id": "job_x", "status": "failed", "finished_at": None}))
    stamped = body["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamped)
    assert abs(datetime.fromisoformat(stamped).timestamp() - time.time()) < 60


@pytest.mark.parametrize("status", ["queued", "in_progress", None])
def test_a_job_that_has_not_ended_has_no_event(status: str | None) -> None:
    with pytest.raises(ValueError, match="no webhook event"):
        event_body({"id": "job_x", "status": status})


# --- the submit-time URL check --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",
        "http://hooks.example.com:8080/a?b=c",
        "https://8.8.8.8/hook",
        "https://[2606:4700::1111]/",
    ],
)
def test_public_webhook_urls_pass(url: str) -> None:
    check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_private_literal_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url(url, allow_private=False)
    assert (caught.value.param, caught.value.code, caught.value.status_code) == ("webhook_url", "url_not_allowed", 400)
    check_webhook_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    ["", "ftp://example.com/x", "file:///etc/passwd", "https://", "example.com/hook", "http://h:99999/", 42, None],
)
def test_malformed_webhook_urls_are_refused(url: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url(url, allow_private=True)
    assert caught.value.param == "webhook_url" and caught.value.status_code == 400


async def fake_dns(host: str, port: int) -> list[str]:
    names = {
        "localhost": ["127.0.0.1", "::1"],
        "hooks.example.com": ["93.184.215.14"],
        "mixed.example": ["8.8.8.8", "10.0.0.1"],
    }
    if host not in names:
        raise OSError("unknown host")
    return names[host]


@pytest.mark.parametrize("host", ["localhost", "mixed.example"])
async def test_a_name_resolving_to_a_private_address_is_refused_at_submit(host: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await webhooks.check_webhook_target(f"http://{host}:8080/hook", allow_private=False, resolver=fake_dns)
    assert (caught.value.param, caught.value.code) == ("webhook_url", "url_not_allowed")
    await webhooks.check_webhook_target(f"http://{host}:8080/hook", allow_private=True, resolver=fake_dns)


async def test_public_and_unresolvable_names_pass_at_submit() -> None:
    await webhooks.check_webhook_target("https://hooks.example.com/in", allow_private=False, resolver=fake_dns)
    await webhooks.check_webhook_target("https://not-yet.example/in", allow_private=False, resolver=fake_dns)
    with pytest.raises(InvalidRequest):  # and what the sync check refuses, this refuses too
        await webhooks.check_webhook_target("http://127.0.0.1/", allow_private=False, resolver=fake_dns)


def test_no_secret_means_no_webhook() -> None:
    with pytest.raises(InvalidRequest) as caught:
        require_secret(None)
    assert (caught.value.param, caught.value.code) == ("webhook_url", "webhook_secret_missing")
    assert require_secret(SECRET) == SECRET


# --- backoff --------------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_honours_retry_after(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    try:
        sender = WebhookSender(db, allow_private=False, base_delay_seconds=5.0)
        for attempts in range(1, 8):
            ceiling = 5.0 * 2 ** (attempts - 1)
            delays = [sender.next_delay(attempts, None) for _ in range(50)]
            assert all(ceiling / 2 <= d <= ceiling for d in delays)
            assert len(set(delays)) > 1  # jittered
        assert sender.next_delay(1, 120.0) >= 120.0  # Retry-After is a floor
        assert sender.next_delay(40, None) <= webhooks.MAX_DELAY_SECONDS
    finally:
        db.close()


# --- per-key secrets ------------------------------------------------------------------------------


def test_a_stored_key_gets_its_own_secret(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    try:
        store = KeyStore(db)
        (one, _), (two, _) = store.create("a"), store.create("b")
        first, second = store.webhook_secret(one.id), store.webhook_secret(two.id)
        assert first is not None and second is not None and first != second
        secret_key(first)
        assert store.webhook_secret("key_unknown") is None
        store.revoke(one.id)
        assert store.webhook_secret(one.id) is None  # a revoked key asks for no more webhooks
    finally:
        db.close()


def test_keys_create_shows_the_webhook_secret_once(tmp_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "ci"], catch_exceptions=False)
    assert created.exit_code == 0
    secrets_shown = re.findall(r"whsec_[A-Za-z0-9+/=]+", created.stderr)
    assert len(secrets_shown) == 1
    assert created.stdout.strip().startswith("ig-") and "whsec_" not in created.stdout  # stdout: the key alone
    listed = runner.invoke(cli, ["keys", "list"], catch_exceptions=False)
    assert "whsec_" not in listed.output
    key_id = next(word for word in created.stderr.split() if word.startswith("key_"))
    db = Database(Path(Settings().database_path))
    try:
        assert KeyStore(db).webhook_secret(key_id) == secrets_shown[0]
    finally:
        db.close()
