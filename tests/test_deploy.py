"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/nginx.conf, deploy/kubernetes/,
docs/production.md) agree with the code and with each other.

Docker, nginx and Kubernetes are not run here: the files are read as data (PyYAML, a small
nginx-config reader, the Dockerfile's instructions) and what they set is checked against
`Settings`, the ports and paths the gateway serves, and what the other files name. Settings are
built from each environment they give a gateway, so a value the gateway would refuse at start
fails here. The one script the compose file runs, deploy/create_bucket.py, runs against moto's
real S3 server on loopback.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import ipaddress
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from imagegate.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
FIELDS = {name.upper() for name in Settings.model_fields}
GATEWAY_PORT = 8000  # the Dockerfile's CMD: imagegate serve --host 0.0.0.0 --port 8000


def imagegate_names(names: Any) -> set[str]:
    return {name for name in names if name.startswith("IMAGEGATE_")}


def not_settings(names: Any) -> set[str]:
    """IMAGEGATE_* names that are no field of Settings (a typo, or a setting that does not exist)."""
    return {name for name in imagegate_names(names) if name.removeprefix("IMAGEGATE_") not in FIELDS}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a gateway given exactly `env` would build them at start (values validated)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# -- the Dockerfile --


@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, one list per FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def exec_form(args: str) -> list[str]:
    """CMD ["a", "b"] -> ["a", "b"] (exec form is JSON)."""
    value = yaml.safe_load(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


def dockerfile_user_id() -> int:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER: the gateway would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "USER is numeric, so Kubernetes' runAsNonRoot can verify it"
    return int(user)


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    uid = dockerfile_user_id()
    assert uid != 0
    groups = [i.args for i in final_stage() if i.keyword == "USER"][-1].split(":")[1:]
    assert groups and groups[0] != "0", "the group is not root either"


def test_the_image_serves_on_8000_with_a_health_check_and_a_data_volume() -> None:
    stage = final_stage()
    by_keyword: dict[str, list[str]] = {}
    for instruction in stage:
        by_keyword.setdefault(instruction.keyword, []).append(instruction.args)
    assert exec_form(by_keyword["CMD"][-1]) == ["imagegate", "serve", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)]
    assert by_keyword["EXPOSE"] == [str(GATEWAY_PORT)]
    healthcheck = by_keyword["HEALTHCHECK"][-1]
    assert f"http://127.0.0.1:{GATEWAY_PORT}/health/live" in healthcheck
    assert exec_form(by_keyword["VOLUME"][-1]) == ["/data"]
    env = " ".join(by_keyword["ENV"])
    assert re.search(r"\bIMAGEGATE_DATA_DIR=/data\b", env)
    assert not_settings(re.findall(r"\b(IMAGEGATE_[A-Z_]+)=", env)) == set()


def test_the_image_is_two_stages_on_slim_python_311() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "wheels are built in one stage and installed in another"
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (PYTHON_IMAGE)=(\S+)$", text, flags=re.M))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert all(stage[0].args.startswith("${PYTHON_IMAGE}") for stage in stages)


def test_the_image_does_not_install_the_local_engine_by_default() -> None:
    text = (ROOT / "Dockerfile").read_text()
    defaults = re.findall(r"^ARG EXTRAS=(.*)$", text, flags=re.M)
    assert defaults, "the extras are a build argument"
    assert all(yaml.safe_load(value) in ("", None) for value in defaults), defaults
    installs = [i.args for stage in dockerfile_stages() for i in stage if i.keyword == "RUN" and "pip " in i.args]
    assert installs
    for command in installs:
        assert "local" not in command and "torch" not in command, command
        # The extras come only from the build argument.
        assert "[" not in command.replace("${EXTRAS:+[${EXTRAS}]}", ""), command
    local_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    assert any(dep.startswith("torch") for dep in local_extra), "the local extra is what brings torch"


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "no exceptions: this reader does not handle them"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: it or a folder above it matches."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and any(
                fnmatch.fnmatchcase("/".join(candidate.split("/")[i:]), pattern[3:])
                for i in range(len(candidate.split("/")))
            ):
                return True
    return False


def test_what_the_dockerfile_copies_is_in_the_build_context_and_secrets_are_not() -> None:
    patterns = dockerignore_patterns()
    copies = [i.args.split() for stage in dockerfile_stages() for i in stage if i.keyword == "COPY"]
    sources = [src for args in copies if not any(a.startswith("--from") for a in args) for src in args[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"
    for secret in (".env", "deploy/.env", ".git/config", ".venv/bin/python"):
        assert ignored(secret, patterns), secret
    assert not ignored("src/imagegate/data/models.json", patterns)


def test_the_installed_package_has_every_data_file() -> None:
    """The image installs a wheel, which holds only the package data pyproject.toml names: a
    catalog file or a migration left out works from the source tree and fails in the image."""
    package = ROOT / "src" / "imagegate"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["imagegate"]
    packaged = {path for pattern in patterns for path in package.glob(pattern)}
    data_files = {
        path
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data_files, "the package has data files (the catalog)"
    assert data_files <= packaged, sorted(str(p.relative_to(package)) for p in data_files - packaged)


# -- the compose file --

INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line}"
            values[name.strip()] = value.strip()
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, from `env` (deploy/.env)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op is not None and op.endswith("?"):
            assert not unset, f"{name} is required ({arg}) but .env.example does not set it"
        if op is not None and op.endswith("-") and unset:
            return str(arg)
        return current or ""

    return INTERPOLATION.sub(one, value)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # NAME=value items
        env = dict(item.split("=", 1) for item in env)
    return {name: interpolate(str(value), env_example()) for name, value in env.items()}


def imagegate_image() -> str:
    return str(compose()["x-imagegate-image"]["image"])


def gateways() -> dict[str, dict[str, Any]]:
    """The services that run the image's own command (imagegate serve)."""
    services = compose()["services"]
    return {
        name: service
        for name, service in services.items()
        if service.get("image") == imagegate_image() and service.get("command") is None
    }


def test_compose_runs_two_gateways_from_the_dockerfile() -> None:
    found = gateways()
    assert len(found) == 2, sorted(found)
    for name, service in found.items():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name
        assert str(service.get("user", "10001")).split(":")[0] not in ("0", "root"), f"{name} runs as root"


def test_every_imagegate_variable_compose_sets_is_a_setting() -> None:
    names: set[str] = set()
    for service in compose()["services"].values():
        names |= set(service_environment(service))
    assert imagegate_names(names), "the compose file configures the gateways"
    assert not_settings(names) == set()
    assert not_settings(env_example()) == set()


def test_the_gateways_get_the_shared_backends_and_settings_they_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    for name, service in gateways().items():
        env = service_environment(service)
        for needed in (
            "IMAGEGATE_DATABASE_URL",
            "IMAGEGATE_REDIS_URL",
            "IMAGEGATE_RESULTS_URL",
            "IMAGEGATE_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "IMAGEGATE_ADMIN_KEYS",
            "IMAGEGATE_PUBLIC_URL",
            "GEMINI_API_KEY",
        ):
            assert needed in env, f"{name} lacks {needed}"
        assert env["IMAGEGATE_RESULTS_URL"] == "s3://imagegate/results"
        # Each backend URL names a service of this file, on the port its image listens on.
        for variable, service_port in (
            ("IMAGEGATE_DATABASE_URL", 5432),
            ("IMAGEGATE_REDIS_URL", 6379),
            ("IMAGEGATE_S3_ENDPOINT_URL", 5000),
        ):
            url = urlsplit(env[variable])
            assert url.hostname in services, f"{variable} points at {url.hostname}, not a service"
            assert url.port == service_port, variable
        settings = settings_from(env, monkeypatch)
        assert settings.database_url and settings.database_url.startswith("postgresql://")
        assert settings.static_admin_keys, "the admin keys from .env reach the gateway"


def test_the_gateways_wait_for_the_migration_to_complete() -> None:
    services = compose()["services"]
    migrations = [name for name, s in services.items() if s.get("command") == ["imagegate", "migrate"]]
    assert len(migrations) == 1, migrations
    migrate = services[migrations[0]]
    assert migrate.get("image") == imagegate_image()
    assert migrate.get("restart") == "no", "a one-shot service"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in gateways().items():
        assert service["depends_on"][migrations[0]]["condition"] == "service_completed_successfully", name
        env = service_environment(service)
        assert service_environment(migrate)["IMAGEGATE_DATABASE_URL"] == env["IMAGEGATE_DATABASE_URL"], (
            "migrate migrates the database the gateways use"
        )


def test_the_gateways_trust_forwarded_headers_from_nginx_only(monkeypatch: pytest.MonkeyPatch) -> None:
    nginx = compose()["services"]["nginx"]
    (network, attachment), *_ = nginx["networks"].items()
    address = ipaddress.ip_address(attachment["ipv4_address"])
    subnet = ipaddress.ip_network(compose()["networks"][network]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    for name, service in gateways().items():
        assert service["networks"] == [network], name
        trusted = settings_from(service_environment(service), monkeypatch).trusted_proxy_networks
        assert trusted == [ipaddress.ip_network(f"{address}/32")], f"{name} trusts exactly nginx"
        assert "ports" not in service, f"{name} is reached through nginx only"


def test_each_gateway_keeps_its_own_data_dir_on_a_volume() -> None:
    declared = set(compose()["volumes"])
    seen: set[str] = set()
    for name, service in gateways().items():
        mounts = dict(volume.split(":")[1::-1] for volume in service["volumes"])  # target -> source
        assert "/data" in mounts, f"{name} has no data volume"
        assert mounts["/data"] in declared, f"{name}'s data dir is a named volume (it outlives the container)"
        assert mounts["/data"] not in seen, "one data dir per instance"
        seen.add(mounts["/data"])


def test_the_bucket_compose_creates_is_the_one_the_gateways_use() -> None:
    services = compose()["services"]
    init = services["s3-init"]
    assert "/deploy/create_bucket.py" in init["command"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    assert (DEPLOY / mounted["/deploy/create_bucket.py"]).exists()
    init_env = service_environment(init)
    for name, service in gateways().items():
        env = service_environment(service)
        for variable in ("IMAGEGATE_RESULTS_URL", "IMAGEGATE_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            assert init_env[variable] == env[variable], (name, variable)
        assert service["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"


# -- nginx --


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{len(found)} {name} in {self.name} {self.args}"
        return found[0]


@dataclass
class _Reader:
    tokens: list[str]
    at: int = 0
    seen: list[str] = field(default_factory=list)

    def block(self) -> list[Directive]:
        directives: list[Directive] = []
        while self.at < len(self.tokens) and self.tokens[self.at] != "}":
            words: list[str] = []
            while self.tokens[self.at] not in (";", "{"):
                words.append(self.tokens[self.at].strip("\"'"))
                self.at += 1
            end = self.tokens[self.at]
            self.at += 1
            if end == "{":
                inner = self.block()
                assert self.tokens[self.at] == "}"
                self.at += 1
                directives.append(Directive(words[0], words[1:], inner))
            else:
                directives.append(Directive(words[0], words[1:]))
        return directives


def nginx_config() -> Directive:
    text = "\n".join(line.split("#", 1)[0] for line in (DEPLOY / "nginx.conf").read_text().splitlines())
    tokens = re.findall(r"\"[^\"]*\"|'[^']*'|[{};]|[^\s{};]+", text)
    reader = _Reader(tokens)
    top = reader.block()
    assert reader.at == len(tokens), "unbalanced braces"
    return Directive("main", [], top)


def nginx_server() -> Directive:
    return nginx_config().one("http").one("server")


def location_for(server: Directive, path: str) -> Directive:
    """The location nginx picks for `path`: an exact match, else the longest prefix if it is
    `^~`, else the first regex that matches, else the longest prefix."""
    locations = server.all("location")
    for location in locations:
        if location.args[0] == "=" and location.args[1] == path:
            return location
    prefixes = [loc for loc in locations if loc.args[0] not in ("=", "~", "~*") and path.startswith(loc.args[-1])]
    longest = max(prefixes, key=lambda loc: len(loc.args[-1]), default=None)
    if longest is not None and longest.args[0] == "^~":
        return longest
    for location in locations:
        if location.args[0] in ("~", "~*"):
            flags = re.IGNORECASE if location.args[0] == "~*" else 0
            if re.search(location.args[1], path, flags):
                return location
    assert longest is not None, f"no location for {path}"
    return longest


def setting(block: Directive, name: str, server: Directive) -> list[str]:
    """A directive's value in a location, else inherited from the server, else from http."""
    for scope in (block, server, nginx_config().one("http")):
        found = scope.all(name)
        if found:
            return found[-1].args
    return []


def test_nginx_proxies_to_both_gateways() -> None:
    http = nginx_config().one("http")
    upstreams = {u.args[0]: u for u in http.all("upstream")}
    assert len(upstreams) == 1
    (name, upstream), *_ = upstreams.items()
    servers = {s.args[0] for s in upstream.all("server")}
    assert servers == {f"{gateway}:{GATEWAY_PORT}" for gateway in gateways()}
    server = nginx_server()
    for path in ("/v1/images/generations", "/v1/models", "/v1/results/abc.png", "/health/ready", "/v1/admin/keys"):
        assert setting(location_for(server, path), "proxy_pass", server) == [f"http://{name}"], path
    published = compose()["services"]["nginx"]["ports"][0]
    assert server.one("listen").args[0] == interpolate(published, env_example()).split(":")[-1]


def test_nginx_passes_streams_unbuffered() -> None:
    server = nginx_server()
    for path in (
        "/v1/images/generations",
        "/openai/v1/images/generations",
        "/v1/images/edits",
        "/openai/v1/images/edits",
        "/v1/images/jobs/job_123/events",
        "/openai/v1/images/jobs/job_123/events",
    ):
        location = location_for(server, path)
        assert setting(location, "proxy_buffering", server) == ["off"], path
        assert setting(location, "proxy_pass", server), path


def nginx_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def nginx_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG])?", value).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower() if unit else None]


def test_nginx_waits_as_long_as_a_request_and_takes_the_largest_upload() -> None:
    server = nginx_server()
    defaults = Settings()
    location = location_for(server, "/v1/images/generations")
    for timeout in ("proxy_read_timeout", "proxy_send_timeout", "send_timeout"):
        assert nginx_seconds(setting(location, timeout, server)[0]) >= defaults.request_timeout_seconds, timeout
    assert nginx_bytes(setting(location, "client_max_body_size", server)[0]) > defaults.max_upload_bytes
    # nginx must drop an idle upstream connection before the gateway does, or it reuses a closed one.
    upstream = nginx_config().one("http").one("upstream")
    assert nginx_seconds(upstream.one("keepalive_timeout").args[0]) < defaults.idle_timeout_seconds
    # Upstream keep-alive needs HTTP/1.1 without a Connection: close.
    assert setting(location, "proxy_http_version", server) == ["1.1"]


def test_nginx_forwards_the_client_address_scheme_and_host() -> None:
    server = nginx_server()
    headers = {d.args[0].lower(): d.args[1] for d in server.all("proxy_set_header")}
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme"
    assert headers["x-forwarded-host"] in ("$host", "$http_host")


def test_nginx_never_retries_a_generation_on_the_other_gateway() -> None:
    """A POST that failed on one gateway may have been paid for upstream: nginx must not send it
    to the other one (it does only with `non_idempotent`)."""
    server = nginx_server()
    for scope in (server, *server.all("location")):
        for directive in scope.all("proxy_next_upstream"):
            assert "non_idempotent" not in directive.args


# -- Kubernetes --


def kubernetes_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / resource).read_text()):
            objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def secret_example() -> dict[str, Any]:
    document = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_kustomization_lists_the_manifests_and_names_the_image() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects = kubernetes_objects()
    kinds = {kind for kind, _ in objects}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget"} <= kinds
    images = {image["name"] for image in kustomization["images"]}
    for (kind, name), document in objects.items():
        if kind in ("Deployment", "Job"):
            for container in document["spec"]["template"]["spec"]["containers"]:
                assert container["image"] in images, f"{kind} {name}: its image is set by kustomization.yaml"
    assert kustomization["namespace"] == secret_example()["metadata"]["namespace"]
    namespaces = [name for kind, name in objects if kind == "Namespace"]
    assert namespaces == [kustomization["namespace"]]


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        f"{kind}/{name}": document["spec"]["template"]["spec"]
        for (kind, name), document in kubernetes_objects().items()
        if kind in ("Deployment", "Job")
    }


def test_the_pods_run_non_root_on_a_read_only_root_filesystem() -> None:
    uid = dockerfile_user_id()
    for name, spec in pod_specs().items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == uid, f"{name}: the image's user"
        assert pod.get("runAsGroup") != 0
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            # What the gateway writes must be a writable volume: the data dir and the temp dir.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            volumes = {v["name"]: v for v in spec["volumes"]}
            for path in (env["IMAGEGATE_DATA_DIR"], "/tmp"):
                assert path in mounts, f"{name}: {path} is not writable"
                assert "emptyDir" in volumes[mounts[path]], name


def deployment() -> dict[str, Any]:
    return kubernetes_objects()[("Deployment", "imagegate")]


def test_the_deployment_runs_two_replicas_with_health_probes() -> None:
    document = deployment()
    assert document["spec"]["replicas"] == 2
    labels = document["spec"]["template"]["metadata"]["labels"]
    assert document["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = document["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": GATEWAY_PORT}
    assert container["args"] == ["imagegate", "serve", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    grace = document["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= Settings().request_timeout_seconds, "a request in flight may finish before SIGKILL"


def test_the_service_pdb_and_hpa_select_the_gateway_pods() -> None:
    objects = kubernetes_objects()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "imagegate")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = objects[("PodDisruptionBudget", "imagegate")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment()["spec"]["replicas"], "a drain can proceed"
    hpa = yaml.safe_load((KUBERNETES / "hpa.yaml").read_text())
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "imagegate"}


def test_the_migrate_job_runs_imagegate_migrate_with_the_gateways_settings() -> None:
    job = kubernetes_objects()[("Job", "imagegate-migrate")]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["imagegate", "migrate"]
    (gateway,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == gateway["envFrom"], "the same database settings as the gateways"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_the_configmap_and_secret_hold_settings_the_gateway_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = kubernetes_objects()
    (gateway,) = deployment()["spec"]["template"]["spec"]["containers"]
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in gateway["envFrom"]}
    config = objects[("ConfigMap", refs["configMapRef"])]["data"]
    secret = secret_example()
    assert secret["metadata"]["name"] == refs["secretRef"]
    env = {**config, **secret["stringData"], **{e["name"]: e["value"] for e in gateway["env"]}}
    assert not_settings(env) == set()
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values are strings"
    settings = settings_from(env, monkeypatch)
    assert settings.database_url and settings.redis_url and settings.results_url
    assert settings.static_admin_keys
    # Each pod's data dir is an emptyDir, deleted with the pod: a usage journal there would be lost
    # with it, so usage rows go to the database before the answer does.
    assert settings.usage_writer == "inline"
    # A container sees the node's CPUs: the processes match what the pod requests.
    cpu = gateway["resources"]["requests"]["cpu"]
    assert settings.workers == int(cpu) and settings.conversion_workers == int(cpu)
    assert settings.conversion_memory_bytes is not None
    limit = gateway["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and settings.conversion_memory_bytes < int(limit[:-2]) * 1024**3


# -- docs --


def test_every_setting_the_production_guide_names_exists() -> None:
    guide = (ROOT / "docs" / "production.md").read_text()
    named = set(re.findall(r"\b(IMAGEGATE_[A-Z_]+[A-Z])\b", guide))
    client_side = {"IMAGEGATE_SERVER", "IMAGEGATE_API_KEY"}  # the CLI's, as a client
    assert len(named) > 20, "the guide walks through the settings"
    assert not_settings(named - client_side) == set()
    for required in ("DATABASE_URL", "REDIS_URL", "RESULTS_URL", "RESULTS_PRESIGN", "PUBLIC_URL", "TRUSTED_PROXIES"):
        assert f"IMAGEGATE_{required}" in named, required
    readme = (ROOT / "README.md").read_text()
    assert "(docs/production.md)" in readme


def test_the_deploy_commands_in_the_docs_name_files_that_exist() -> None:
    """Paths the guide and the manifests' comments tell an operator to use."""
    text = (ROOT / "docs" / "production.md").read_text()
    paths = set(re.findall(r"\b(deploy/[\w./-]+\w)", text))
    assert {"deploy/compose.yaml", "deploy/kubernetes"} <= paths
    for path in paths:
        assert (ROOT / path).exists(), path


# -- the bucket script compose runs --


def create_bucket_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("create_bucket", DEPLOY / "create_bucket.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bucket_name_comes_from_the_results_url() -> None:
    module = create_bucket_module()
    assert module.bucket_of("s3://imagegate/results") == "imagegate"
    assert module.bucket_of("s3://b") == "b"
    for bad in ("", "/data/results", "https://s3.example.com/imagegate", "s3:///results"):
        with pytest.raises(ValueError):
            module.bucket_of(bad)


def test_the_bucket_script_makes_the_bucket_once(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    module = create_bucket_module()
    bucket = "ig-deploy-" + secrets.token_hex(4)
    monkeypatch.setenv("IMAGEGATE_RESULTS_URL", f"s3://{bucket}/results")
    monkeypatch.setenv("IMAGEGATE_S3_ENDPOINT_URL", s3_env["IMAGEGATE_S3_ENDPOINT_URL"])
    client = boto3.client("s3", endpoint_url=s3_env["IMAGEGATE_S3_ENDPOINT_URL"])
    try:
        assert module.main() == 0
        assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
        # Run again (compose runs it on every `up`): the bucket is there, and that is success.
        assert module.create_bucket(bucket, s3_env["IMAGEGATE_S3_ENDPOINT_URL"]) is False
    finally:
        client.delete_bucket(Bucket=bucket)


def test_the_bucket_script_waits_for_the_endpoint_then_gives_up(s3_env: dict[str, str]) -> None:
    from botocore.exceptions import EndpointConnectionError

    from .backends import free_port

    module = create_bucket_module()
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointConnectionError):
        module.create_bucket("never-made", closed, wait_seconds=0)


def test_the_health_check_is_python_that_compiles() -> None:
    """The HEALTHCHECK runs `python -c ...` in the image (it has no curl): the code must compile."""
    healthcheck = next(i.args for i in final_stage() if i.keyword == "HEALTHCHECK")
    command = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")
