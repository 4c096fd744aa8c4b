"""Which provider serves a model: the first configured one in the model's priority order."""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Catalog, ModelEntry, ProviderBinding
from .errors import ModelNotFound, UpstreamUnavailable
from .providers import ImageProvider


@dataclass(frozen=True)
class Route:
    model: ModelEntry
    provider_id: str
    binding: ProviderBinding
    provider: ImageProvider


class Router:
    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, ImageProvider],
        order_overrides: dict[str, list[str]] | None = None,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.order_overrides = order_overrides or {}

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

    def route(self, model_id: str) -> Route:
        model = self.model(model_id)
        available = self.available_providers(model)
        if not available:
            envs = ", ".join(f"{p.upper()}_API_KEY" for p in model.providers)
            raise UpstreamUnavailable(
                f"No provider is configured for model '{model_id}'. Set one of: {envs}.",
                param="model",
                code="provider_not_configured",
            )
        provider_id = available[0]
        return Route(model, provider_id, model.providers[provider_id], self.providers[provider_id])
