"""Dashboard sign-in, as pure logic over an injected clock: one-time login codes and signed session
cookies.

A code is minted over gRPC (``cryptotune dashboard``), lives ``CODE_TTL_S`` seconds and works once; the
browser trades it for a session cookie. The cookie is ``EXPIRY.NONCE.MAC``, an HMAC over the expiry and
nonce with the daemon's dashboard key (a file in the state dir), so it still works after a daemon
restart and needs no server-side table.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

CODE_TTL_S = 60.0
SESSION_TTL_S = 12 * 3600.0
MAX_OUTSTANDING_CODES = 1000


class Refusal(enum.Enum):
    """Why a login code was refused, with the HTTP status the dashboard answers."""

    MISSING = "missing"
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"

    @property
    def status(self) -> int:
        """401 without a code, 403 for a code never issued, 410 for a spent or expired one."""
        return {Refusal.MISSING: 401, Refusal.UNKNOWN: 403}.get(self, 410)

    @property
    def message(self) -> str:
        """What the browser shows."""
        again = "run `cryptotune dashboard` for a new one."
        return {
            Refusal.MISSING: "This page needs a login code: run `cryptotune dashboard` and open the URL "
            "it prints.",
            Refusal.UNKNOWN: f"This login code is not valid: {again}",
            Refusal.USED: f"This login code was used already: {again}",
            Refusal.EXPIRED: f"This login code has expired: {again}",
        }[self]


class LoginRefused(Exception):
    """A login code that cannot be traded for a session."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass
class _Code:
    target: str
    expires_at: float
    used: bool = False


class LoginCodes:
    """One-time codes, each naming the page to open after login (``""`` for the jobs list)."""

    def __init__(self, ttl: float = CODE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._codes: dict[str, _Code] = {}

    def issue(self, target: str = "") -> str:
        """A new code (256 random bits) for ``target``."""
        self._prune()
        if len(self._codes) >= MAX_OUTSTANDING_CODES:  # bounded: drop the oldest
            self._codes.pop(next(iter(self._codes)))
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(target, self._clock() + self.ttl)
        return code

    def redeem(self, code: str) -> str:
        """The code's target; the code is spent.

        Raises:
            LoginRefused: MISSING, UNKNOWN, USED or EXPIRED.
        """
        if not code:
            raise LoginRefused(Refusal.MISSING)
        entry = self._codes.get(code)
        if entry is None:
            raise LoginRefused(Refusal.UNKNOWN)
        if entry.used:
            raise LoginRefused(Refusal.USED)
        if self._clock() >= entry.expires_at:
            raise LoginRefused(Refusal.EXPIRED)
        entry.used = True
        return entry.target

    def _prune(self) -> None:
        # Spent and expired codes are kept one more lifetime, so that reuse says "used"/"expired".
        horizon = self._clock() - self.ttl
        for code in [c for c, e in self._codes.items() if e.expires_at < horizon]:
            del self._codes[code]


class Sessions:
    """Signed session cookies: ``EXPIRY.NONCE.MAC`` (HMAC-SHA256 with the daemon's dashboard key)."""

    def __init__(
        self, key: bytes, ttl: float = SESSION_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self) -> str:
        """A new session value, valid for ``ttl`` seconds."""
        payload = f"{int(self._clock() + self.ttl)}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, value: str | None) -> bool:
        """Whether ``value`` was issued with this key and has not expired."""
        if not value or value.count(".") != 2:
            return False
        expiry, nonce, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(f"{expiry}.{nonce}")):
            return False
        return expiry.isdigit() and int(expiry) > self._clock()


def cookie_name(daemon_id: str) -> str:
    """The session cookie's name: one per daemon, since browsers share cookies across ports."""
    return f"cryptotune_session_{hashlib.sha256(daemon_id.encode()).hexdigest()[:12]}"
