"""Page weight: the bytes a first visit to each web page transfers, measured in Debian's Chromium.

A fresh gateway (`imagegate serve`, this checkout's src/ first on PYTHONPATH, an empty data
directory, no provider) serves the pages; for each of `/` (the playground), `/models`,
`/models/gemini-3-pro-image-preview` and `/docs`, a new browser context (an empty cache) opens the
page and waits until the network is idle. Chromium's DevTools protocol reports each response's
bytes on the wire (`Network.loadingFinished.encodedDataLength`: headers and body as sent,
compressed if the server compressed it); the bench prints them per request and in total.

No API key is typed, so the playground's own API calls (they need one) are not part of the figure:
it is the first load a newcomer sees.

    .venv/bin/python bench/page_weight.py             # a few seconds
    .venv/bin/python bench/page_weight.py --json /tmp/weight.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["/", "/models", "/models/gemini-3-pro-image-preview", "/docs"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gateway(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update(PYTHONPATH=str(ROOT / "src"), IMAGEGATE_DATA_DIR=str(data_dir), IMAGEGATE_API_KEYS="bench-key")
    command = [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gateway not up at {url}")


def weigh(browser: Browser, url: str) -> list[tuple[str, int]]:
    """(url, bytes on the wire) of every request a first visit makes."""
    context = browser.new_context()
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    urls: dict[str, str] = {}
    sizes: dict[str, int] = {}
    cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
    cdp.on("Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], int(e["encodedDataLength"])))
    page.goto(url, wait_until="networkidle")
    context.close()
    return [(urls.get(request_id, "?"), size) for request_id, size in sizes.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    data_dir = Path(tempfile.mkdtemp(prefix="page-weight-"))
    proc, base = start_gateway(data_dir)
    report: dict[str, Any] = {}
    try:
        with sync_playwright() as playwright:
            launch_args = ["--no-sandbox"] if os.geteuid() == 0 else []
            browser = playwright.chromium.launch(executable_path=chromium, args=launch_args)
            for path in PAGES:
                requests = weigh(browser, base + path)
                total = sum(size for _, size in requests)
                report[path] = {"total_bytes": total, "requests": [{"url": u, "bytes": s} for u, s in requests]}
                print(f"{path}: {total} bytes in {len(requests)} requests")
                for request_url, size in requests:
                    print(f"  {size:>8}  {request_url.removeprefix(base)}")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
