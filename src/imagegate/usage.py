"""Usage and cost records, one row per served request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from .db import Database


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    key_id: str | None
    user: str | None
    model: str
    provider: str
    mode: str
    images: int
    cost: float
    input_tokens: int
    output_tokens: int
    safety_identifier: str | None = None  # OpenAI's end-user safety id; like `user`, never sent upstream


class UsageSink(Protocol):
    def record(self, usage: UsageRecord) -> None: ...


class UsageLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, usage: UsageRecord) -> None:
        self.db.execute(
            "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
            "input_tokens, output_tokens, safety_identifier) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (usage.request_id, time.time(), usage.key_id, usage.user, usage.model, usage.provider, usage.mode,
             usage.images, usage.cost, usage.input_tokens, usage.output_tokens, usage.safety_identifier),
        )

    def totals_by_model(self) -> list[tuple[str, int, int, float]]:
        """(model, requests, images, cost) over all records."""
        rows = self.db.execute(
            "SELECT model, COUNT(*), SUM(images), SUM(cost) FROM usage GROUP BY model ORDER BY model"
        )
        return [(str(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in rows]
