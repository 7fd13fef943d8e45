"""What the app builds in its lifespan and hands to every request (the ASGI lifespan
state: each request's scope["state"] holds it under STATE_KEY)."""

from dataclasses import dataclass

from seatres.domain.service import ReservationService
from seatres.metrics import Metrics
from seatres.settings import Settings
from seatres.store.connection import AsyncClient
from seatres.store.redis_store import RedisStore
from seatres.tokens import TokenVerifier

STATE_KEY = "seatres"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    redis: AsyncClient  # one Redis, or a Redis Cluster
    store: RedisStore
    service: ReservationService
    tokens: TokenVerifier
    metrics: Metrics
    started_at: float  # time.monotonic() when the app started
