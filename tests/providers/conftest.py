"""Fixtures for the provider contract tests: adapters called directly against the fakes."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

# Built once: loading the CA bundle per client costs ~0.1 s a test (all traffic here is plain HTTP).
SSL_CONTEXT = ssl.create_default_context()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
        yield client
