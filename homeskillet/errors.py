"""One error tree for Homeskillet.

::

    HomeskilletError                 root; .code (stable, machine-readable), .retryable
    ├── BadRequest                   the caller sent something we cannot serve as given (400)
    │   ├── PayloadTooLarge          prompt or body over the limit (413)
    │   ├── UnknownCovenant          no template by that name or model (404)
    │   └── NotFound                 no such allocation/reservation/result for this tenant (404)
    ├── Unauthorized                 no valid credential: missing, expired, bad signature… (401)
    ├── Forbidden                    a valid credential whose scopes do not grant the action (403)
    ├── CovenantError                a covenant file or override is invalid; names file and key (422)
    ├── NoPoolError                  no pool can meet the covenant; names each unmet term (503)
    ├── BudgetExceeded               the tenant's budget cannot cover the hold (402)
    ├── TenantRateLimited            the tenant is over its requests/tokens per minute (429)
    ├── StrikeFailed                 a strike did not return a result (retryable on fallback)
    │   ├── Preempted                the pool evicted the strike mid-inference
    │   ├── Cancelled                we stopped the strike (a hedge lost the race); .billed_usd
    │   └── ProviderError            a provider's API said no; .provider, .http_status
    │       ├── ProviderAuthError    our credential was refused (not retryable)
    │       ├── RateLimited          429; .retry_after_s
    │       └── NoCapacity           nothing to rent or allocate that fits, right now
    ├── LeaseRejected                the pool would not commit a lease (stale quote, no capacity)
    ├── DeadlineExceeded             the covenant's hard deadline passed (504)
    ├── StreamInterrupted            a strike failed after part of its text was streamed (502)
    ├── TrainingFailed               a distillation training round did not finish (its job's last words)
    ├── StateUnavailable             shared JetStream state did not answer in time (503, retryable)
    └── ExtraMissing                 an optional extra is not installed; says which to install

Errors carry the facts a caller decides on: ``retryable``, the covenant ``term`` that failed,
and the fallback steps ``tried`` (each once, in order, at most ``MAX_TRIED``). Ingresses map
``code``/``status`` onto their own envelopes; what goes in a header is ``header_text`` (one line,
at most ``MAX_HEADER_BYTES``), the whole message and ``tried`` go in the body.
"""

from __future__ import annotations

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_TRIED",
    "BadRequest",
    "BudgetExceeded",
    "Cancelled",
    "CovenantError",
    "DeadlineExceeded",
    "ExtraMissing",
    "Forbidden",
    "HomeskilletError",
    "LeaseRejected",
    "NoCapacity",
    "NoPoolError",
    "NotFound",
    "PayloadTooLarge",
    "Preempted",
    "ProviderAuthError",
    "ProviderError",
    "RateLimited",
    "StateUnavailable",
    "StreamInterrupted",
    "StrikeFailed",
    "TenantRateLimited",
    "TrainingFailed",
    "Unauthorized",
    "UnknownCovenant",
    "Unmet",
    "header_text",
    "unique_tried",
]

MAX_TRIED = 64  # a fallback walk that loops (a parked query retrying) must not grow an error without end
MAX_HEADER_BYTES = 512  # well under the 1 KB a header may take (NATS service errors, HTTP)


def unique_tried(tried: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Each entry once, first seen first; past ``MAX_TRIED`` the rest are counted, not listed."""
    seen = tuple(dict.fromkeys(tried))
    if len(seen) <= MAX_TRIED:
        return seen
    return (*seen[:MAX_TRIED - 1], f"… and {len(seen) - MAX_TRIED + 1} more")


def header_text(text: str, limit: int = MAX_HEADER_BYTES) -> str:
    """``text`` fit for a header value: one line, no control characters, at most ``limit`` UTF-8
    bytes (cut with "…"); the full text belongs in the body."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    raw = flat.encode()
    if len(raw) <= limit:
        return flat
    return raw[:limit - 3].decode(errors="ignore") + "…"


class HomeskilletError(Exception):
    code = "internal"
    status = 500
    retryable = False

    def __init__(self, message: str, *, term: str | None = None, tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.term = term
        self.tried = tried

    @property
    def tried(self) -> tuple[str, ...]:
        return self._tried

    @tried.setter
    def tried(self, value: tuple[str, ...] | list[str]) -> None:
        self._tried = unique_tried(value)


class BadRequest(HomeskilletError):
    code = "bad_request"
    status = 400


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    status = 413


class UnknownCovenant(BadRequest):
    code = "unknown_covenant"
    status = 404


class NotFound(BadRequest):
    """Unknown, or another tenant's: both look the same so nothing leaks."""

    code = "not_found"
    status = 404


class Unauthorized(HomeskilletError):
    """``term`` says why: missing, malformed, expired, signature, audience, issuer, tenant_claim…"""

    code = "unauthorized"
    status = 401


class Forbidden(HomeskilletError):
    """Authenticated, but the credential does not grant this operation (``term``: scope)."""

    code = "forbidden"
    status = 403


class CovenantError(HomeskilletError):
    code = "invalid_covenant"
    status = 422


class Unmet:
    """One covenant term a pool could not meet, with what it offered instead."""

    __slots__ = ("detail", "pool", "term")

    def __init__(self, term: str, detail: str, pool: str = "") -> None:
        self.term = term
        self.detail = detail
        self.pool = pool

    def __repr__(self) -> str:
        return f"Unmet({self.term!r}, {self.detail!r}, pool={self.pool!r})"


class NoPoolError(HomeskilletError):
    code = "no_pool"
    status = 503

    def __init__(self, covenant: str, unmet: list[Unmet], tried: tuple[str, ...] = ()) -> None:
        self.unmet = unmet
        terms = sorted({u.term for u in unmet}) or ["capacity"]
        # Name each unmet term once, with the closest offer, so the user knows what to relax.
        lines = []
        for term in terms:
            first = next((u for u in unmet if u.term == term), None)
            lines.append(f"{term} ({first.detail}{', ' + first.pool if first and first.pool else ''})"
                         if first else term)
        tried = unique_tried(tried)
        tried_txt = f"; fallback steps tried: {', '.join(tried)}" if tried else ""
        super().__init__(
            f"no pool can meet covenant {covenant!r}: unmet {'; '.join(lines)}{tried_txt}",
            term=terms[0],
            tried=tried,
        )


class BudgetExceeded(HomeskilletError):
    code = "budget_exceeded"
    status = 402


class TenantRateLimited(HomeskilletError):
    code = "rate_limit_exceeded"
    status = 429
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float, term: str | None = None) -> None:
        super().__init__(message, term=term)
        self.retry_after_s = retry_after_s


class StrikeFailed(HomeskilletError):
    code = "strike_failed"
    status = 502
    retryable = True


class Preempted(StrikeFailed):
    code = "preempted"

    def __init__(self, message: str, *, billed_usd: float | None = None, term: str | None = None,
                 tried: tuple[str, ...] = ()) -> None:
        super().__init__(message, term=term, tried=tried)
        self.billed_usd = billed_usd  # what the provider bills for the evicted part, when it says


class ProviderError(StrikeFailed):
    code = "provider_error"

    def __init__(self, message: str, *, provider: str, http_status: int = 0, term: str | None = None) -> None:
        super().__init__(f"{provider}: {message}", term=term)
        self.provider, self.http_status = provider, http_status


class ProviderAuthError(ProviderError):
    code = "provider_auth"
    retryable = False


class RateLimited(ProviderError):
    code = "rate_limited"

    def __init__(self, message: str, *, provider: str, http_status: int = 429, retry_after_s: float | None = None,
                 term: str | None = None) -> None:
        super().__init__(message, provider=provider, http_status=http_status, term=term)
        self.retry_after_s = retry_after_s


class NoCapacity(ProviderError):
    code = "no_capacity"


class LeaseRejected(HomeskilletError):
    code = "lease_rejected"
    status = 409
    retryable = True


class DeadlineExceeded(HomeskilletError):
    code = "deadline_exceeded"
    status = 504


class StreamInterrupted(HomeskilletError):
    """A streamed answer's strike failed after some of its text reached the client. It is not
    re-struck elsewhere (the client would get a second, different answer after the first's start);
    asking again is safe, and a query that does not stream fails over as usual."""

    code = "stream_interrupted"
    status = 502
    retryable = True


class StateUnavailable(HomeskilletError):
    """Shared state (JetStream KV or stream) did not answer within its patience: no quorum, or a
    leader election that outlasted it. Nothing was changed that a retry would double."""

    code = "state_unavailable"
    status = 503
    retryable = True


class ExtraMissing(HomeskilletError):
    code = "extra_missing"
    status = 501

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs the {extra!r} extra: pip install 'homeskillet[{extra}]'")


class Cancelled(StrikeFailed):
    """We cancelled the strike (the loser of a hedged race); ``billed_usd`` is what its provider
    bills for the part that ran."""

    code = "cancelled"

    def __init__(self, message: str, *, billed_usd: float = 0.0) -> None:
        super().__init__(message)
        self.billed_usd = billed_usd


class TrainingFailed(HomeskilletError):
    code = "training_failed"
    status = 500
