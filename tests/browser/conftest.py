"""Real-browser fixtures: Debian's Chromium driven by Playwright's sync API against the real gateway.

One browser for the package's tests (starting Chromium is the slow part); each test gets a fresh context, so no
cookie, storage or cache is shared between tests. The `browse` fixture is the page a test drives:

- every request the page makes is recorded, and one that leaves the gateway's origin fails the test
  (and is aborted, so nothing reaches the network: the pages must work with no internet);
- console errors and uncaught page exceptions fail the test (a missing asset shows as
  "Failed to load resource" on the console);
- each page visited is saved as a full-page screenshot in tests/browser/artifacts/ (gitignored; the
  directory is emptied at the start of each session, so it holds the latest run only):
  `<test name>.png` is the last page a test showed, `<test name>.<n>.png` the earlier ones.

Playwright's own browser downloads are not used: Chromium comes from Debian (`apt-get install chromium`,
.ci/run does it) and is launched by its path.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, Route, sync_playwright

from ..conftest import RunningGateway

ARTIFACTS = Path(__file__).parent / "artifacts"
# Schemes that never leave the page: an inline image, a blob made in the page, the blank first page.
LOCAL_SCHEMES = ("data", "blob", "about")


def chromium_path() -> str:
    """Debian's Chromium: /usr/bin/chromium, or whatever `chromium` is on the PATH."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("chromium is missing: apt-get install -y chromium")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Emptied once per session: the screenshots are the latest run's only."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for all of tests/browser, closed when they are done: the rest of the suite then
    runs with no browser, and no Playwright event loop, left over."""
    # Chromium's sandbox refuses to start as root (CI containers); elsewhere it stays on. A container's
    # /dev/shm is often 64 MB, too small for Chromium's shared memory: it uses /tmp instead.
    args = ["--disable-dev-shm-usage", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=args)
        yield launched
        launched.close()


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@dataclass
class Browse:
    """A page on the gateway, with what it asked for and what went wrong on it."""

    page: Page
    gateway: RunningGateway
    shots: Path
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    responses: dict[str, int] = field(default_factory=dict)  # url -> HTTP status, the last one
    failed: list[str] = field(default_factory=list)  # requests that got no answer at all
    visited: int = 0
    # HTTP statuses a test expects from the API (a wrong key's 401, a bad size's 400): Chromium logs
    # each as "Failed to load resource", which is then not counted as a console error.
    expected_api_statuses: set[int] = field(default_factory=set)

    @property
    def origin(self) -> tuple[str, str]:
        return origin(self.gateway.url)

    def goto(self, path: str, *, status: int = 200) -> Page:
        """Open `path` on the gateway, wait until it and its assets are loaded; the page before it
        is saved as a screenshot first."""
        if self.visited:
            self.screenshot(f"{self.shots.stem}.{self.visited}")
        self.visited += 1
        response = self.page.goto(self.gateway.url + path, wait_until="load")
        assert response is not None and response.status == status, (path, response and response.status)
        return self.page

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots.with_name(f"{name}.png")), full_page=True)

    def _on_request(self, request: Request) -> None:
        self.requests.append(request.url)
        if urlsplit(request.url).scheme not in LOCAL_SCHEMES and origin(request.url) != self.origin:
            self.foreign.append(request.url)

    def _on_response(self, response: Response) -> None:
        self.responses[response.url] = response.status

    def _on_failed(self, request: Request) -> None:
        self.failed.append(f"{request.url}: {request.failure}")

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        status = re.match(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        api_call = origin(url) == self.origin and urlsplit(url).path.startswith("/v1/")
        if not (status and api_call and int(status.group(1)) in self.expected_api_statuses):
            self.console_errors.append(f"{message.text} ({message.location.get('url', '')})")

    def _route(self, route: Route) -> None:
        """Nothing leaves the machine: a request off the gateway's origin is aborted (and was
        recorded by _on_request, which fails the test)."""
        url = route.request.url
        if urlsplit(url).scheme in LOCAL_SCHEMES or origin(url) == self.origin:
            route.continue_()
        else:
            route.abort()


def artifact_name(node_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name).strip("_")


@pytest.fixture
def browse(
    browser: Browser, gateway: RunningGateway, artifacts_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Browse]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    session = Browse(page, gateway, artifacts_dir / f"{artifact_name(request.node.name)}.png")
    page.on("request", session._on_request)
    page.on("console", session._on_console)
    page.on("response", session._on_response)
    page.on("requestfailed", session._on_failed)
    page.on("pageerror", lambda error: session.console_errors.append(f"uncaught: {error}"))
    context.route("**/*", session._route)
    try:
        yield session
        if session.visited:
            session.screenshot(session.shots.stem)
    finally:
        context.close()
    assert not session.foreign, f"requests left the gateway's origin {gateway.url}: {session.foreign}"
    assert not session.console_errors, f"console errors: {session.console_errors}"
