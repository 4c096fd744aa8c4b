"""Vertex AI (Google Cloud): Nano Banana Pro and Nano Banana through `generateContent`, with OAuth.

    POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent
    Authorization: Bearer <access token>

The body and the answer are the Gemini API's (the same proto-JSON `GenerateContentRequest` and
`GenerateContentResponse`), so this module reuses providers/gemini.py's body building, response
parsing and Google error parsing, and adds only what differs: the URL, the bearer token, and the
Vertex-only image output options (PNG and JPEG made natively, so the gateway converts nothing).
Streamed partial images (`request.on_partial`) use gemini.py's `stream_content` the same way.

Tokens come from google-auth: the key file named by GOOGLE_APPLICATION_CREDENTIALS (a service
account's key honours its `token_uri`), else application default credentials. google-auth is
synchronous, so a refresh runs in a worker thread, and only one runs at a time: concurrent
requests wait for the same refresh. A token is reused until google-auth calls it stale
(`REFRESH_THRESHOLD`, 3 min 45 s before it expires). A 401 from Vertex (a revoked token, a clock
skew) gets one fresh token and one retry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import httpx
import requests
from google.auth.credentials import TokenState
from google.oauth2 import service_account

from ..errors import ConfigurationError, UpstreamAuthFailed, UpstreamError
from ..imaging import MIME_BY_FORMAT
from ..plugins import ProviderContext, ProviderSpec, Setting, catalog_file
from .base import ImageProvider, ProviderRequest, ProviderResult
from .gemini import _google_error as google_error
from .gemini import build_body, parse_response, stream_content, stream_error
from .transport import UpstreamResponse, parse_json, retry_after_seconds, send, upstream_text

# The scope every Vertex AI call needs (python-genai _api_client.py, load_auth).
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Multi-region locations with their own host (python-genai _api_client.py, _MULTI_REGIONAL_LOCATIONS).
MULTI_REGIONAL_LOCATIONS = frozenset({"us", "eu"})
DEFAULT_LOCATION = "global"
TOKEN_TIMEOUT_SECONDS = 30.0  # one token-endpoint call; google-auth's own default is 120 s


def default_base_url(location: str) -> str:
    """Vertex AI's host for a location. `global` is one world-wide host; `us` and `eu` are
    multi-regions on `.rep.`; every other location is a regional host. Sources: python-genai
    `_api_client.py` (BaseApiClient.__init__), and Google's "Global endpoint" docs
    (https://docs.cloud.google.com/vertex-ai/docs/generative-ai/learn/locations: the global URL is
    https://aiplatform.googleapis.com/v1/projects/PROJECT/locations/global/...)."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in MULTI_REGIONAL_LOCATIONS:
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def auth_failed(message: str) -> UpstreamAuthFailed:
    """No token: the gateway's Google credentials, not the client's request, are at fault (502)."""
    return UpstreamAuthFailed(f"vertex: {message}")


def load_key_file(path: str) -> google.auth.credentials.Credentials:
    """The credentials in a key file: a service account's with `from_service_account_file` (its
    `token_uri` is where tokens are asked for), any other kind google-auth reads (an authorized
    user's, workload identity federation) with `load_credentials_from_file`. A file that is missing
    or holds no key is a configuration error, found when the gateway starts."""
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        if isinstance(info, dict) and info.get("type") == "service_account":
            # google-auth's functions are untyped (py.typed, but no annotations): hence the ignores.
            account: google.auth.credentials.Credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                path, scopes=[CLOUD_PLATFORM_SCOPE]
            )
            return account
        loaded: google.auth.credentials.Credentials
        loaded, _project = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
            path, scopes=[CLOUD_PLATFORM_SCOPE]
        )
        return loaded
    except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        raise ConfigurationError(
            f"GOOGLE_APPLICATION_CREDENTIALS ({path}) is not a readable Google credentials file: {exc}"
        ) from exc


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with a bounded timeout on every token-endpoint call."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session)
        self.timeout = timeout

    def __call__(
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any
    ) -> Any:
        call = super().__call__  # untyped in google-auth
        return call(url, method=method, body=body, headers=headers, timeout=timeout or self.timeout, **kwargs)  # type: ignore[no-untyped-call]


class AccessTokens:
    """An OAuth access token for Vertex AI, cached and refreshed (see the module docstring).

    `credentials` None: application default credentials, looked up by `resolve` (at server start,
    else on the first refresh)."""

    def __init__(
        self, credentials: google.auth.credentials.Credentials | None, timeout: float = TOKEN_TIMEOUT_SECONDS
    ) -> None:
        self._credentials = credentials
        self._session = requests.Session()
        self._transport = _TimedRequest(self._session, timeout)
        # The refresh in progress, shared by every request that needs a token meanwhile.
        self._refreshing: asyncio.Future[str] | None = None

    def _fresh(self) -> str | None:
        creds = self._credentials
        if creds is None or creds.token_state != TokenState.FRESH:
            return None
        token: str | None = creds.token
        return token

    async def token(self) -> str:
        """The cached token, or a new one when there is none or it is stale."""
        return self._fresh() or await self._refresh()

    async def replace(self, rejected: str) -> str:
        """A token other than `rejected`, which Vertex refused: a new one, unless a refresh since
        has already brought one."""
        current = self._fresh()
        if current is not None and current != rejected:
            return current
        return await self._refresh()

    async def _refresh(self) -> str:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._refresh_blocking))
            # Its failure is every waiter's; if all of them were cancelled, nobody is left to read it.
            self._refreshing.add_done_callback(lambda done: done.cancelled() or done.exception())
        # shield: a request cancelled while waiting (deadline, disconnect) leaves the refresh to the others.
        return await asyncio.shield(self._refreshing)

    def resolve(self) -> google.auth.credentials.Credentials:
        """The credentials: the key file's, else application default credentials, looked up once
        (blocking: on Google Cloud that asks the metadata server). None found is a configuration
        error: the operator set VERTEX_PROJECT but gave the gateway no way to sign in."""
        if self._credentials is None:
            try:
                self._credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise ConfigurationError(
                    "VERTEX_PROJECT is set but no Google credentials were found: set GOOGLE_APPLICATION_CREDENTIALS "
                    f"to a service-account key file, or run `gcloud auth application-default login` ({exc})"
                ) from exc
        return self._credentials

    def _refresh_blocking(self) -> str:
        try:
            credentials = self.resolve()
            credentials.refresh(self._transport)  # type: ignore[no-untyped-call]
        except ConfigurationError as exc:  # no credentials at all (a CLI run, which has no start)
            raise auth_failed(exc.message) from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            # RefreshError (the token endpoint said no), TransportError (it could not be reached).
            raise auth_failed(
                f"could not get an access token ({type(exc).__name__}: {upstream_text(str(exc), 300)})."
            ) from exc
        token: str | None = credentials.token
        if not token:
            raise auth_failed("the token endpoint answered without an access token.")
        return token

    def close(self) -> None:
        self._session.close()


def build_vertex_body(request: ProviderRequest) -> dict[str, Any]:
    """The Gemini API's body, plus Vertex's `imageConfig.imageOutputOptions` when the gateway asks
    for a format the binding declares native (`request.output_format` is set only then). Field
    names: python-genai `_ImageConfig_to_vertex` (output_mime_type -> imageOutputOptions.mimeType,
    output_compression_quality -> imageOutputOptions.compressionQuality, "for image/jpeg only"
    per types.ImageConfig) and Vertex's v1 ImageConfig.ImageOutputOptions."""
    body = build_body(request)
    if request.output_format is not None:
        options: dict[str, Any] = {"mimeType": MIME_BY_FORMAT[request.output_format]}
        if request.output_format == "jpeg" and request.output_compression is not None:
            options["compressionQuality"] = request.output_compression
        body["generationConfig"]["imageConfig"]["imageOutputOptions"] = options
    return body


class VertexProvider(ImageProvider):
    provider_id: ClassVar[str] = "vertex"

    def __init__(
        self,
        *,
        project: str,
        client: httpx.AsyncClient,
        location: str = DEFAULT_LOCATION,
        base_url: str | None = None,
        tokens: AccessTokens,
        timeout: float = 300.0,
        max_response_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.project = project
        self.location = location
        self.base_url = (base_url or default_base_url(location)).rstrip("/")
        self.client = client
        self.tokens = tokens
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes

    @classmethod
    def from_context(cls, context: ProviderContext) -> VertexProvider:
        """The adapter from its settings (see SETTINGS); a key file that cannot be read fails here,
        at start, not on the first request."""
        key_file = context.value("credentials_file")
        tokens = AccessTokens(load_key_file(key_file) if key_file else None)
        return cls(
            project=context.value("project") or "",
            location=context.value("location") or DEFAULT_LOCATION,
            base_url=context.value("base_url"),
            client=context.client,
            tokens=tokens,
            timeout=context.timeout,
            max_response_bytes=context.max_response_bytes,
        )

    def url_for(self, model: str, method: str = "generateContent") -> str:
        return (
            f"{self.base_url}/v1/projects/{self.project}/locations/{self.location}"
            f"/publishers/google/models/{model}:{method}"
        )

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._generate_content(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._generate_content(request)

    async def _generate_content(self, request: ProviderRequest) -> ProviderResult:
        if request.on_partial is not None:
            return await self._stream_content(request)
        return await self._plain_content(request)

    async def _plain_content(self, request: ProviderRequest) -> ProviderResult:
        url = self.url_for(request.upstream_model)
        body = build_vertex_body(request)
        token = await self.tokens.token()
        response = await self._post(url, body, token)
        if response.status_code == 401:  # revoked or expired early: one new token, one more try
            response = await self._post(url, body, await self.tokens.replace(token))
        if response.status_code != 200:
            try:
                data = parse_json(self.provider_id, response.body)
            except UpstreamError:
                data = None
            raise google_error(self.provider_id, response.status_code, data, retry_after_seconds(response.headers))
        keep_all = request.options.get("limit_generations") is False
        return parse_response(parse_json(self.provider_id, response.body), keep_all_images=keep_all)

    async def _stream_content(self, request: ProviderRequest) -> ProviderResult:
        """Partial images asked for: Gemini's streamed call under Vertex's URL. The method is
        `projects.locations.publishers.models.streamGenerateContent` (Vertex AI REST reference,
        https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest-rpc), in its SSE form
        `?alt=sse` (python-genai models.py uses '{model}:streamGenerateContent?alt=sse' for
        Vertex too). A 401 comes before any event, so it gets the same one retry as above."""
        url = self.url_for(request.upstream_model, "streamGenerateContent") + "?alt=sse"
        token = await self.tokens.token()
        try:
            return await self._stream(request, url, token)
        except UpstreamAuthFailed as exc:
            if exc.upstream_status != 401:
                raise
        return await self._stream(request, url, await self.tokens.replace(token))

    async def _stream(self, request: ProviderRequest, url: str, token: str) -> ProviderResult:
        return await stream_content(
            self.client,
            url,
            build_vertex_body(request),
            request,
            provider=self.provider_id,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            headers={"authorization": f"Bearer {token}"},
            error=lambda response: stream_error(self.provider_id, response),
            plain=lambda: self._plain_content(request),
        )

    async def _post(self, url: str, body: dict[str, Any], token: str) -> UpstreamResponse:
        return await send(
            self.client,
            "POST",
            url,
            provider=self.provider_id,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            json=body,
            headers={"authorization": f"Bearer {token}"},
        )

    async def start(self) -> None:
        """Server start: find the credentials now, so a machine without any fails to start with a
        clear message instead of failing (slowly: the metadata-server probe) every request."""
        await asyncio.to_thread(self.tokens.resolve)

    async def aclose(self) -> None:
        self.tokens.close()


# What turns the provider on: a project (credentials come from the key file, else from application
# default credentials). VERTEX_BASE_URL points it elsewhere (a fake, a proxy); left out, the host
# follows the location (default_base_url).
SETTINGS = (
    Setting("project", "VERTEX_PROJECT", required=True),
    Setting("location", "VERTEX_LOCATION", default=DEFAULT_LOCATION),
    Setting("base_url", "VERTEX_BASE_URL"),
    Setting("credentials_file", "GOOGLE_APPLICATION_CREDENTIALS"),
)


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py). The catalog data adds vertex as the last provider of Nano
    Banana Pro and Nano Banana, with Vertex's upstream ids and prices."""
    register(
        ProviderSpec(
            id=VertexProvider.provider_id,
            factory=VertexProvider.from_context,
            settings=SETTINGS,
            catalog=catalog_file("imagegate", "data/providers/vertex.json"),
        )
    )
