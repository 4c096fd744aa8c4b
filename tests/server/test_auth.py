"""Bearer keys: static ones from the environment and hashed ones from the key store."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest

from imagegate.config import FileConfig, Settings
from imagegate.db import Database
from imagegate.keys import KeyStore, hash_key
from imagegate.plugins import load_registry, setting_values

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini

MODEL = "gemini-3-pro-image-preview"


def test_missing_and_wrong_keys_are_401(gateway: RunningGateway) -> None:
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic abc"}, {"authorization": "Bearer"}):
        response = httpx.post(gateway.url + "/v1/images/generations", json={"prompt": "p"}, headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    response = httpx.get(gateway.url + "/v1/models")
    assert response.status_code == 401


def test_sdk_with_wrong_key_raises_authentication_error(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="wrong").images.generate(model=MODEL, prompt="p")


def test_multiple_static_keys(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(api_keys="k1, k2", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    for key in ("k1", "k2"):
        assert len(gw.client(api_key=key).images.generate(model=MODEL, prompt="p").data) == 1
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="k3").images.generate(model=MODEL, prompt="p")


def test_stored_keys_are_hashed_and_revocable(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(api_keys="", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    store = KeyStore(Database(gw.settings.database_path))
    record, plaintext = store.create("ci")
    rows = sqlite3.connect(gw.settings.database_path).execute("SELECT key_hash FROM api_keys").fetchall()
    assert rows == [(hash_key(plaintext),)]
    assert plaintext not in gw.settings.database_path.read_bytes().decode("latin-1")

    assert len(gw.client(api_key=plaintext).images.generate(model=MODEL, prompt="p").data) == 1
    assert store.revoke(record.id)
    # Revoked here, in another process's store: the gateway's key cache believes it within 1 s.
    deadline = time.monotonic() + 1.0
    with pytest.raises(openai.AuthenticationError):
        while time.monotonic() < deadline:
            gw.client(api_key=plaintext).images.generate(model=MODEL, prompt="p")
            time.sleep(0.05)
    assert not store.revoke(record.id)
    # Revoking the last key must not turn the gateway open.
    assert httpx.post(gw.url + "/v1/images/generations", json={"prompt": "p"}).status_code == 401


def test_open_mode_without_any_key(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(api_keys="", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    response = httpx.post(
        gw.url + "/v1/images/generations", json={"prompt": "p", "response_format": "b64_json"}, timeout=30
    )
    assert response.status_code == 200


def test_result_urls_need_no_key(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    url = client.images.generate(model=MODEL, prompt="p").data[0].url or ""
    assert httpx.get(url).status_code == 200  # no Authorization header


def test_settings_read_the_documented_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_API_KEYS", "a,b")
    monkeypatch.setenv("IMAGEGATE_PUBLIC_URL", "https://img.example.com/")
    monkeypatch.setenv("GEMINI_API_KEY", "g")
    monkeypatch.setenv("GEMINI_BASE_URL", "http://gemini.local")
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai.local/v1")
    settings = Settings()
    assert settings.static_keys == ["a", "b"]
    assert settings.base_public_url == "https://img.example.com"
    # Provider variables are declared by the provider plugins and read through them.
    registry = load_registry()
    gemini = setting_values(registry.specs["gemini"], settings, FileConfig())
    assert (gemini["api_key"], gemini["base_url"]) == ("g", "http://gemini.local")
    openai = setting_values(registry.specs["openai"], settings, FileConfig())
    assert (openai["api_key"], openai["base_url"]) == ("o", "http://openai.local/v1")
