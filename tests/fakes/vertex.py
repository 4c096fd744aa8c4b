"""Fake Google OAuth token endpoint and fake Vertex AI `generateContent`, on real loopback HTTP.

Token endpoint: the JWT-bearer grant (RFC 7523) that google-auth's service-account credentials send
to their key file's `token_uri`: a form body `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
and `assertion=<JWT>`, the JWT signed RS256 with the key's private key (header `kid` = the key id),
claims `iss` (the account's email), `scope`, `aud` = https://oauth2.googleapis.com/token (whatever
the token_uri), `iat`, `exp`. The answer is `{"access_token", "expires_in", "token_type": "Bearer"}`;
a refusal is `{"error": "invalid_grant", "error_description": ...}` with HTTP 400. Sources:
google-auth `oauth2/service_account.py` (_make_authorization_grant_assertion) and `oauth2/_client.py`
(jwt_grant, _handle_error_response, _parse_expiry).

Vertex: FakeGemini's validation and answers (Vertex takes the same proto-JSON), under Vertex's path
`/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`,
with bearer tokens the token endpoint issued, Google's error bodies (401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 404 NOT_FOUND), and the Vertex-only `imageConfig` fields (`imageOutputOptions`,
`personGeneration`, `prominentPeople`: python-genai `_ImageConfig_to_vertex`; Vertex v1 ImageConfig).
`:streamGenerateContent` streams as FakeGemini does (the same `Streamed` scripts).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .common import BaseFake, Delay, Hang, RawResponse, RecordedRequest, json_response, parse_json, raw_response
from .gemini import METHODS, FakeGemini, ParsedRequest, _invalid, _Reject, google_error_body, parse_request

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "GOOGLE_TOKEN_AUDIENCE",
    "FakeGoogleOAuth",
    "FakeVertex",
    "ServiceAccount",
    "TokenError",
    "VERTEX_OUTPUT_MIMES",
    "new_service_account",
    "write_key_file",
]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth's `aud`, whatever the token_uri
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# imageOutputOptions.mimeType values the fake makes. Vertex's reference names no list; PNG and JPEG
# are what Vertex's image models produce (UNCONFIRMED for webp, which the binding does not declare).
VERTEX_OUTPUT_MIMES = frozenset({"image/png", "image/jpeg"})
PERSON_GENERATION = frozenset({"ALLOW_ALL", "ALLOW_ADULT", "ALLOW_NONE"})  # Vertex v1 ImageConfig.PersonGeneration


# --- service-account keys ------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    project_id: str
    key_id: str
    private_key_pem: str
    public_key: rsa.RSAPublicKey


def new_service_account(
    email: str = "imagegate-test@test-project.iam.gserviceaccount.com", project_id: str = "test-project"
) -> ServiceAccount:
    """A service account with a freshly generated RSA key (2048 bits, as Google issues)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return ServiceAccount(email, project_id, secrets.token_hex(20), pem, key.public_key())


def write_key_file(path: Path, account: ServiceAccount, token_uri: str) -> Path:
    """A service-account key file as the Cloud console downloads it, its token_uri pointed at the fake."""
    info = {
        "type": "service_account",
        "project_id": account.project_id,
        "private_key_id": account.key_id,
        "private_key": account.private_key_pem,
        "client_email": account.client_email,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


# --- the token endpoint --------------------------------------------------------------------


@dataclass(frozen=True)
class TokenError:
    """Refuse the grant with an OAuth error body (400 invalid_grant is not retried by google-auth)."""

    status: int = 400
    error: str = "invalid_grant"
    description: str = "Invalid grant: account not found"


class _Refusal(Exception):
    def __init__(self, description: str, error: str = "invalid_grant") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeGoogleOAuth(BaseFake):
    """`POST /token`: checks the JWT-bearer grant of a registered account and issues tokens."""

    def __init__(self, *, expires_in: int = 3600) -> None:
        super().__init__()
        self.expires_in = expires_in
        self._default_expires_in = expires_in
        self.accounts: dict[str, ServiceAccount] = {}
        self.issued: list[str] = []  # every access token handed out, in order
        self.revoked: set[str] = set()

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def register(self, account: ServiceAccount) -> None:
        self.accounts[account.client_email] = account

    def is_valid(self, token: str) -> bool:
        return token in self.issued and token not in self.revoked

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def reset(self) -> None:
        super().reset()
        self.expires_in = self._default_expires_in
        self.issued.clear()
        self.revoked.clear()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/token", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        recorded = await self.record(request)
        async with self.track():
            behaviour = self.next_behaviour()
            if isinstance(behaviour, (Hang, Delay)):
                await self.sleep(request, behaviour.seconds)
            elif isinstance(behaviour, TokenError):
                return json_response(
                    behaviour.status, {"error": behaviour.error, "error_description": behaviour.description}
                )
            elif isinstance(behaviour, RawResponse):
                return raw_response(behaviour)
            try:
                recorded.json = self._check_grant(recorded)
            except _Refusal as refusal:
                return json_response(400, {"error": refusal.error, "error_description": refusal.description})
            token = f"ya29.fake-{secrets.token_urlsafe(16)}"
            self.issued.append(token)
            return json_response(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def _check_grant(self, recorded: RecordedRequest) -> dict[str, Any]:
        """The verified JWT claims, or a _Refusal as Google words it."""
        if not recorded.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise _Refusal("Invalid request: the body must be form-encoded.", "invalid_request")
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(recorded.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise _Refusal(f"Invalid grant_type: {form.get('grant_type')}", "unsupported_grant_type")
        try:
            head_b64, claims_b64, signature_b64 = form.get("assertion", "").split(".")
            header = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except (ValueError, binascii.Error):
            raise _Refusal("Invalid JWT: the assertion is not a JWT.") from None
        if header.get("alg") != "RS256":
            raise _Refusal("Invalid JWT: the signing algorithm must be RS256.")
        account = self.accounts.get(claims.get("iss", ""))
        if account is None:
            raise _Refusal("Invalid grant: account not found")
        if header.get("kid") != account.key_id:
            raise _Refusal("Invalid JWT Signature.")
        try:
            account.public_key.verify(
                signature, f"{head_b64}.{claims_b64}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise _Refusal("Invalid JWT Signature.") from None
        now = time.time()
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            raise _Refusal("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
        if not (claims.get("iat", now + 1e9) <= now + 60 < claims.get("exp", 0) + 60):
            raise _Refusal(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim."
            )
        if CLOUD_PLATFORM_SCOPE not in str(claims.get("scope", "")).split():
            raise _Refusal("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
        return dict(claims)


# --- Vertex AI -------------------------------------------------------------------------------


@dataclass
class VertexParsed(ParsedRequest):
    output_mime: str | None = None  # imageConfig.imageOutputOptions.mimeType
    compression: int | None = None


def _pop(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """Proto-JSON takes both spellings of a field name."""
    value = obj.pop(camel, None)
    other = obj.pop(snake, None)
    return value if value is not None else other


class FakeVertex(FakeGemini):
    """Fake Vertex AI generateContent. Bearer tokens are checked against `oauth`."""

    def __init__(
        self, *, oauth: FakeGoogleOAuth, project: str = "test-project", location: str = "global", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.oauth = oauth
        self.project = project
        self.location = location
        self._place = (project, location)

    def reset(self) -> None:
        super().reset()
        self.project, self.location = self._place

    @property
    def base_url(self) -> str:
        """What to give the adapter as VERTEX_BASE_URL (it appends /v1/projects/...)."""
        return self.url

    def app(self) -> Starlette:
        path = "/v1/projects/{project}/locations/{location}/publishers/google/models/{rest:path}"
        return Starlette(routes=[Route(path, self._handle, methods=["POST"])])

    def mime_for(self, parsed: ParsedRequest) -> str:
        return getattr(parsed, "output_mime", None) or self.output_mime

    async def _respond(self, request: Request, recorded: RecordedRequest) -> Response:
        project, location = request.path_params["project"], request.path_params["location"]
        model, _, method = request.path_params["rest"].rpartition(":")
        recorded.model = model or None
        ok, recorded.json = parse_json(recorded.body)
        resource = f"projects/{project}/locations/{location}/publishers/google/models/{model}"
        try:
            self._check_bearer(request)
            if project != self.project:
                raise _Reject(
                    403,
                    "PERMISSION_DENIED",
                    f"Permission 'aiplatform.endpoints.predict' denied on "
                    f"resource '//aiplatform.googleapis.com/{resource}' (or it may not exist).",
                )
            if (
                location != self.location
                or method not in METHODS
                or not model
                or (self.known_models is not None and model not in self.known_models)
            ):
                raise _Reject(
                    404,
                    "NOT_FOUND",
                    f"Publisher Model `{resource}` was not found or your project does not have access to it.",
                )
            if not ok:
                raise _invalid("Invalid JSON payload received. Unexpected token.")
            parsed = self._parse_vertex(recorded.json)
        except _Reject as reject:
            return json_response(reject.status, google_error_body(reject.status, reject.google_status, reject.message))
        if method == "streamGenerateContent":  # Gemini's event stream (FakeGemini), under Vertex's URL
            return await self._apply_stream(self.next_behaviour(), request, model, parsed)
        return await self._apply(self.next_behaviour(), request, model, parsed)

    def _check_bearer(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.oauth.is_valid(token):
            raise _Reject(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
            )

    def _parse_vertex(self, body: Any) -> VertexParsed:
        """Take the Vertex-only imageConfig fields out (checking them), then validate the rest as
        the Gemini API does."""
        body = json.loads(json.dumps(body))  # a copy to take fields out of
        config = body.get("generationConfig", body.get("generation_config")) if isinstance(body, dict) else None
        image_config = config.get("imageConfig", config.get("image_config")) if isinstance(config, dict) else None
        mime = compression = None
        if isinstance(image_config, dict):
            options = _pop(image_config, "imageOutputOptions", "image_output_options")
            mime, compression = self._output_options(options)
            person = _pop(image_config, "personGeneration", "person_generation")
            if person is not None and person not in PERSON_GENERATION:
                raise _invalid(f"Invalid value at 'generation_config.image_config.person_generation', {person!r}")
            _pop(image_config, "prominentPeople", "prominent_people")
        parsed = parse_request(body)
        return VertexParsed(
            **{f.name: getattr(parsed, f.name) for f in fields(ParsedRequest)},
            output_mime=mime,
            compression=compression,
        )

    def _output_options(self, options: Any) -> tuple[str | None, int | None]:
        if options is None:
            return None, None
        if not isinstance(options, dict) or set(options) - {
            "mimeType",
            "mime_type",
            "compressionQuality",
            "compression_quality",
        }:
            raise _invalid(
                "Invalid JSON payload received. Unknown name at 'generation_config.image_config."
                "image_output_options': Cannot find field."
            )
        mime = _pop(options, "mimeType", "mime_type")
        quality = _pop(options, "compressionQuality", "compression_quality")
        if mime is not None and mime not in VERTEX_OUTPUT_MIMES:
            raise _invalid(f"Unsupported output mime type {mime!r}.")
        if quality is not None and (
            isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100
        ):
            raise _invalid(
                f"Invalid value at 'generation_config.image_config.image_output_options."
                f"compression_quality' (TYPE_INT32), {quality!r}"
            )
        return mime, quality
