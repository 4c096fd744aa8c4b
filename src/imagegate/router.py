"""Which providers serve a model, in what order, and how each of them sees the request.

The catalog (or the config file's `[routing]`) gives the priority order; only configured
providers count. Providers that can honour every provider-specific parameter of the request
come first; a provider whose circuit is open goes last (it is still tried when nothing else is
left, so a request is never refused only because the breaker is cautious).

`plan_candidates` turns those routes into `Candidate`s: each route with its provider's complete
view of the request, decided once, before anything is sent. It is the one place candidates are
built; the dispatcher and the output stage read their decisions and never ask the catalog again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Catalog, ModelEntry, ProviderBinding
from .engine.describe import LOCAL_MODEL_ENV
from .errors import ModelNotFound, ProviderNotConfigured
from .params import NormalizedParams, ProviderView, provider_views
from .plugins import load_registry
from .providers import ImageProvider
from .resilience import CircuitBreaker


@dataclass(frozen=True, eq=False)
class Route:
    model: ModelEntry
    provider_id: str
    binding: ProviderBinding
    provider: ImageProvider


def key_env_var(provider_id: str) -> str:
    """The environment variable(s) that turn a provider on."""
    spec = load_registry().get(provider_id)
    if spec is not None:
        return spec.enabling_variables()
    return LOCAL_MODEL_ENV if provider_id == "local" else f"[providers.{provider_id}] in the config file"


class Router:
    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, ImageProvider],
        order_overrides: dict[str, list[str]] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        # `[routing]` may name a model by an alias: key it by the id it stands for.
        self.order_overrides = {(m.id if (m := catalog.get(k)) else k): v for k, v in (order_overrides or {}).items()}
        self.breaker = breaker or CircuitBreaker(threshold=5, cooldown=30.0)

    def provider_order(self, model: ModelEntry) -> list[str]:
        order = self.order_overrides.get(model.id) or list(model.providers)
        return [p for p in order if p in model.providers]

    def available_providers(self, model: ModelEntry) -> list[str]:
        return [p for p in self.provider_order(model) if p in self.providers]

    def model(self, model_id: str) -> ModelEntry:
        model = self.catalog.get(model_id)
        if model is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return model

    def routes(self, model_id: str, given: set[str] | None = None) -> list[Route]:
        """Configured routes for a model, best first (see the module docstring)."""
        model = self.model(model_id)
        available = self.available_providers(model)
        if not available:
            envs = ", ".join(key_env_var(p) for p in model.providers)
            raise ProviderNotConfigured(
                f"No provider is configured for model '{model_id}'. Set one of: {envs}.", param="model"
            )
        routes = [Route(model, p, model.providers[p], self.providers[p]) for p in available]
        wanted = given or set()
        # sorted() is stable: within each group the priority order stays.
        return sorted(routes, key=lambda r: (self.breaker.is_open(r.provider_id), len(r.binding.unavailable(wanted))))


@dataclass(frozen=True, eq=False)
class Candidate:
    """A route plus its provider's complete view of one request: the parameters it gets (`view`,
    with what it does not apply in `view.ignored`), whether the gateway emulates the request's mask
    for it (it is sent as a reference, and the original is composited back outside it afterwards),
    and the requested output format when the upstream makes it natively (None: the gateway converts)."""

    route: Route
    view: ProviderView  # its `plan` is what the adapter gets (params.WirePlan)
    mask_emulated: bool
    native_output_format: str | None

    @property
    def provider_id(self) -> str:
        return self.route.provider_id

    @property
    def binding(self) -> ProviderBinding:
        return self.route.binding

    @property
    def compressed_upstream(self) -> bool:
        """The upstream makes the requested format itself and is sent `output_compression` too, so
        re-encoding its image would only lose quality (OpenAI's GPT image models)."""
        handling = self.binding.handling("output_compression")
        return (
            self.native_output_format is not None
            and handling is not None
            and handling.handling not in ("emulated", "not_available")
        )


def plan_candidates(params: NormalizedParams, routes: list[Route], *, strict: bool, has_mask: bool) -> list[Candidate]:
    """Every route of a request with its provider's view, best first. A parameter no route
    honours is a 400 here (see params.provider_views), before anything is fetched or sent;
    `strict` is IMAGEGATE_STRICT_PARAMETERS."""
    if not routes:
        return []
    views = provider_views(params, routes[0].model, {r.provider_id: r.binding for r in routes}, strict=strict)
    return [_candidate(route, views[route.provider_id], has_mask) for route in routes]


def _candidate(route: Route, view: ProviderView, has_mask: bool) -> Candidate:
    return Candidate(
        route=route,
        view=view,
        mask_emulated=has_mask and view.mask_emulated,
        native_output_format=view.native_output_format,
    )
