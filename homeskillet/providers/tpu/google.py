"""Cloud TPU API v2, the pure half: Node / Operation / QueuedResource Structs and Google's
``Status{code, message, details}`` mapped to our errors (``provider-apis.md`` §4).

Proto3 JSON leaves out fields at their default value, so every field here has a default: a pending
Operation has no ``done`` key (read as ``False``), a node with no endpoints has no
``networkEndpoints``, an empty list answer is ``{}``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ...errors import NoCapacity, ProviderAuthError, ProviderError, RateLimited

__all__ = [
    "LOST",
    "Node",
    "Operation",
    "QueuedResource",
    "Status",
    "decode",
    "http_error",
    "operation_error",
    "our_status",
]

# Node states in which the node will not serve again without our help.
LOST = frozenset({"PREEMPTED", "TERMINATED"})
_CODES = {1: "CANCELLED", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 6: "ALREADY_EXISTS",
          7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
          13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}


class _Msg(msgspec.Struct, rename="camel"):
    pass


class Status(_Msg):
    """``google.rpc.Status``: ``code`` is the HTTP status in an HTTP error, the gRPC code in an Operation."""

    code: int = 0
    message: str = ""
    status: str = ""
    details: list[dict[str, Any]] = []


class Operation(_Msg):
    name: str
    done: bool = False
    error: Status | None = None
    response: dict[str, Any] | None = None


class AccessConfig(_Msg):
    external_ip: str = ""


class NetworkEndpoint(_Msg):
    ip_address: str = ""
    port: int = 0
    access_config: AccessConfig | None = None


class Node(_Msg):
    name: str = ""
    state: str = "STATE_UNSPECIFIED"
    health: str = ""
    accelerator_type: str = ""
    network_endpoints: list[NetworkEndpoint] = []
    queued_resource: str = ""

    def address(self) -> str:
        """The first host's external IP if it has one, else its internal one."""
        if not self.network_endpoints:
            return ""
        ep = self.network_endpoints[0]
        return (ep.access_config.external_ip if ep.access_config and ep.access_config.external_ip
                else ep.ip_address)


class _FailedData(_Msg):
    error: Status | None = None


class QrState(_Msg):
    state: str = "STATE_UNSPECIFIED"
    state_initiator: str = ""
    failed_data: _FailedData | None = None


class QueuedResource(_Msg):
    name: str = ""
    state: QrState = msgspec.field(default_factory=QrState)


class _Envelope(_Msg):
    error: Status | None = None


def decode(raw: bytes, type_: type[Any]) -> Any:
    return msgspec.json.decode(raw, type=type_)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _describe(status: Status) -> str:
    """The message plus any field violations, so a bad option is named."""
    fields = [f"{v.get('field')}: {v.get('description')}" for d in status.details
              for v in _list(d.get("fieldViolations")) if isinstance(v, dict)]
    return status.message + (f" ({'; '.join(fields)})" if fields and fields[0] not in status.message else "")


def _rate_limit(status: Status) -> bool:
    """RESOURCE_EXHAUSTED is a request quota (wait and retry) or no capacity (go elsewhere)."""
    return (any(d.get("reason") == "RATE_LIMIT_EXCEEDED" for d in status.details)
            or "per minute" in status.message.lower())


def http_error(http_status: int, raw: bytes, *, retry_after_s: float | None = None) -> ProviderError:
    """The error for a failed HTTP call carrying Google's envelope (or none)."""
    try:
        status = decode(raw, _Envelope).error or Status(code=http_status)
    except msgspec.DecodeError:
        status = Status(code=http_status, message=raw[:200].decode("utf-8", "replace").strip())
    message = f"{status.status or http_status}: {_describe(status) or 'no message'}"
    if status.status == "RESOURCE_EXHAUSTED" or http_status == 429:
        if _rate_limit(status) or not status.status:
            return RateLimited(message, provider="tpu", retry_after_s=retry_after_s)
        return NoCapacity(message, provider="tpu", http_status=http_status)
    if status.status in ("UNAUTHENTICATED", "PERMISSION_DENIED") or http_status in (401, 403):
        return ProviderAuthError(f"credential refused ({message}); check the pool's OAuth2 access token and "
                                 "its IAM role on the project", provider="tpu", http_status=http_status)
    return ProviderError(message, provider="tpu", http_status=http_status)


def operation_error(status: Status, what: str) -> ProviderError:
    """The error for an Operation that ended with ``error`` (a gRPC status)."""
    name = _CODES.get(status.code, f"code {status.code}")
    message = f"{what} failed: {name}: {_describe(status)}"
    if status.code == 8:
        return NoCapacity(message, provider="tpu")
    if status.code in (7, 16):
        return ProviderAuthError(message, provider="tpu")
    return ProviderError(message, provider="tpu")


def our_status(state: str) -> str:
    if state == "READY":
        return "running"
    if state in LOST:
        return "preempted"
    if state in ("DELETING", "STOPPED", "STOPPING", "HIDDEN"):
        return "released"
    return "pending"
