"""The HTTP layer: parse, call the service, render. No provider or size logic lives here."""

from .app import create_app

__all__ = ["create_app"]
