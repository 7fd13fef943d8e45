"""JWT bearer tokens: HS256, `sub` is the customer id, admins carry scope seatres:admin.

Verified tokens are cached until they expire: on a flash-sale burst the same few
thousand tokens arrive again and again, and HMAC verification is per-request CPU."""

import math
import time

import jwt

from seatres.domain.errors import Unauthorized
from seatres.domain.ids import CUSTOMER_ID_PATTERN
from seatres.domain.models import Caller

ALGORITHM = "HS256"
ADMIN_SCOPE = "seatres:admin"
LEEWAY_SECONDS = 5
_CACHE_LIMIT = 50_000
_TIME_CLAIMS = ("exp", "nbf", "iat")


def mint(secret: str, subject: str, *, admin: bool = False, ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "iat": now, "exp": now + ttl_seconds}
    if admin:
        claims["scope"] = ADMIN_SCOPE
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class TokenVerifier:
    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._cache: dict[str, tuple[Caller, float]] = {}

    def verify(self, token: str) -> Caller:
        cached = self._cache.get(token)
        if cached is not None:
            caller, expires_at = cached
            if time.time() < expires_at + LEEWAY_SECONDS:
                return caller
            del self._cache[token]
        caller, expires_at = self._decode(token)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (caller, expires_at)
        return caller

    def _decode(self, token: str) -> tuple[Caller, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The token is malformed or wrongly signed") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not CUSTOMER_ID_PATTERN.fullmatch(subject):
            raise Unauthorized("The token's sub must be 1-128 printable ASCII characters")
        scopes = str(claims.get("scope", "")).split()
        return Caller(customer_id=subject, is_admin=ADMIN_SCOPE in scopes), _expiry(claims)


def _expiry(claims: dict[str, object]) -> float:
    """exp in seconds. PyJWT lets NumericDate claims through as numeric strings, and as
    integers too large for a float (float() then raised OverflowError: a 500). RFC 7519
    wants JSON numbers: anything else is a malformed token, 401."""
    for name in _TIME_CLAIMS:
        if name in claims and not _is_seconds(claims[name]):
            raise Unauthorized(f"The token's {name} must be a number of seconds")
    exp = claims["exp"]
    assert isinstance(exp, int | float)
    return float(exp)


def _is_seconds(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
