"""deploy/nginx.conf run by a real nginx in front of two real gateways on loopback.

The config is the compose file's, with what only Docker has swapped for loopback: the gateways'
service names become their loopback ports (and lose `resolve`, which re-resolves names through
Docker's DNS and which nginx before 1.27.3 lacks), and nginx listens on a free loopback port,
keeping its temporary files in the test's directory. Everything else (locations, buffering,
timeouts, headers, body size) is the file as shipped.

nginx comes from Debian (`apt-get install nginx-light`, which .ci/run does); without it these
tests fail with that command, like the other real servers of tests/backends.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from .backends import _wait_for_port, free_port
from .conftest import API_KEY
from .fakes.gemini import FakeGemini, Streamed

NGINX = shutil.which("nginx") or next(
    (str(p) for p in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if p.exists()), None
)


@pytest.fixture(autouse=True)
def _nginx_installed() -> None:
    if NGINX is None:
        pytest.fail("nginx is missing: apt-get install -y nginx-light")


ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemini-3-pro-image-preview"


def loopback_config(gateway_ports: list[int], listen_port: int, temp: Path) -> str:
    """deploy/nginx.conf with the gateways and the listening address on loopback."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = re.findall(r"server (gateway-\d+):8000 resolve", text)
    assert len(servers) == len(gateway_ports), servers
    for name, port in zip(servers, gateway_ports, strict=True):
        text = text.replace(f"server {name}:8000 resolve", f"server 127.0.0.1:{port}")
    assert "listen 8080;" in text
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    # Temporary files (request bodies, responses) in the test's directory, not the system's.
    temp_paths = "".join(
        f"\n    {directive} {temp / name};"
        for directive, name in (
            ("client_body_temp_path", "body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        )
    )
    return text.replace("http {", "http {" + temp_paths, 1)


@dataclass
class Proxy:
    url: str
    log: Path
    gateway_ports: list[int]

    def upstreams(self, at_least: int = 0) -> list[int]:
        """The gateway port of each request nginx passed on, in order (its access log, written as
        each request ends, so a client may have its answer a moment before the line is there)."""
        deadline = time.monotonic() + 10
        while True:
            ports = [int(p) for p in re.findall(r"upstream=127\.0\.0\.1:(\d+)", self.log.read_text())]
            if len(ports) >= at_least or time.monotonic() > deadline:
                return ports
            time.sleep(0.05)


@pytest.fixture
def proxy(gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path) -> Iterator[Proxy]:
    # Two gateways sharing one data dir (so either serves the other's results, as two instances
    # over shared storage do), believing forwarded headers from nginx only, with no public URL:
    # result URLs then follow what nginx forwards.
    gateways = [
        gateway_factory(
            gemini_api_key=fake_gemini.api_key,
            gemini_base_url=fake_gemini.base_url,
            trusted_proxies="127.0.0.1",
            public_url="",
        )
        for _ in range(2)
    ]
    ports = [int(g.url.rsplit(":", 1)[1]) for g in gateways]
    listen = free_port()
    temp = tmp_path / "nginx"
    temp.mkdir()
    config = temp / "nginx.conf"
    config.write_text(loopback_config(ports, listen, temp))
    log = temp / "out.log"
    globals_ = f"daemon off; pid {temp / 'nginx.pid'};"
    if os.geteuid() == 0:  # workers would drop to `nobody`, who cannot enter the test's directory
        globals_ += " user root;"
    assert NGINX is not None
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", str(temp), "-c", str(config), "-g", globals_],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(listen, process, "nginx")
        yield Proxy(f"http://127.0.0.1:{listen}", log, ports)
    finally:
        process.terminate()
        process.wait(10)


def sdk(proxy: Proxy) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_nginx_spreads_requests_over_both_gateways_and_either_serves_a_result(proxy: Proxy) -> None:
    with sdk(proxy) as client:
        urls = [
            client.images.generate(model=MODEL, prompt=f"a fox {i}", response_format="url").data[0].url
            for i in range(4)
        ]
        for url in urls:
            assert url is not None
            # Built on the address the client called, which nginx forwarded (Host, X-Forwarded-*).
            assert url.startswith(f"{proxy.url}/v1/results/"), url
            fetched = httpx.get(url)
            assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert set(proxy.upstreams(at_least=8)) == set(proxy.gateway_ports), "both gateways served requests"


def test_nginx_passes_partial_images_on_while_the_upstream_still_holds_the_answer(
    proxy: Proxy, fake_gemini: FakeGemini
) -> None:
    gate = threading.Event()
    fake_gemini.enqueue(Streamed(thought_images=2, gate=gate))
    try:
        with sdk(proxy) as client:
            stream = client.images.generate(model=MODEL, prompt="a fox", stream=True, partial_images=2)
            events = iter(stream)
            partials = [next(events), next(events)]
            assert not gate.is_set(), "both partial images came through before the answer was sent"
            assert [e.type for e in partials] == ["image_generation.partial_image"] * 2
            gate.set()
            assert [e.type for e in events] == ["image_generation.completed"]
    finally:
        gate.set()


def test_nginx_lets_a_body_past_the_gateway_limit_reach_the_gateway(proxy: Proxy) -> None:
    """60m in nginx, 50 MiB in the gateway: an oversized upload gets the gateway's own OpenAI-style
    413, not nginx's HTML page."""
    body = b"x" * (55 * 1024 * 1024)
    answer = httpx.post(
        f"{proxy.url}/v1/images/generations",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


def test_nginx_keeps_metrics_to_the_inside(proxy: Proxy) -> None:
    """Prometheus scrapes each gateway; through the proxy /metrics is answered by nginx itself."""
    assert httpx.get(f"{proxy.url}/metrics").status_code == 404
    assert proxy.upstreams() == [], "no gateway was asked"
    assert httpx.get(f"{proxy.url}/health").status_code == 200
    assert len(proxy.upstreams(at_least=1)) == 1
