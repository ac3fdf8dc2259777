"""The options of an ``ionet`` pool (``PoolSpec.options``), decoded strictly: a misspelt or
mistyped option is an error naming it, raised before anything is sent to io.net."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from ...errors import HomeskilletError
from ...secrets import Secret, resolve_secret

__all__ = ["IonetOptions", "parse_options", "take_secret"]

Positive = Annotated[float, msgspec.Meta(gt=0)]
T = TypeVar("T", bound=msgspec.Struct)


class IonetOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    base_url: str = "https://api.io.solutions"
    api_key_env: str = "IONET_API_KEY"
    api_key_file: str | None = None
    # What to rent. hardware_id pins one type; otherwise gpu_model matches the hardware name.
    hardware_id: int | None = None
    gpu_model: str = ""  # e.g. "H100"; "" = any
    gpus_per_container: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    location_ids: list[int] = []  # [] = every location that has the hardware
    duration_hours: Annotated[int, msgspec.Meta(ge=1)] = 1  # prepaid hours of the standing deployment
    max_usd_per_hour: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0 = no ceiling
    tflops: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # per GPU; io.net's API does not say
    auto_extend: bool = True  # extend the standing deployment near expiry instead of re-deploying
    renew_before_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0  # extend (or replace) this long before expiry
    # What runs in the container: an OpenAI-compatible server started with --model <id>.
    image_url: str = "vllm/vllm-openai:latest"
    traffic_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    args: list[str] = []  # extra server arguments after --model <id>
    model_ids: dict[str, str] = {}  # our model name -> the id the server loads; default: the same
    env_variables: dict[str, str] = {}
    secret_env: dict[str, str] = {}  # container variable -> the local env var holding its value
    # Timing (seconds).
    poll_interval_s: Positive = 5.0
    ready_timeout_s: Positive = 900.0
    timeout_s: Positive = 30.0  # one API call
    infer_timeout_s: Positive = 300.0
    quote_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # live availability is re-read after this
    catalog_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 600.0  # hardware list and prices


def take_secret(options: dict[str, Any], what: str, default_env: str) -> tuple[dict[str, Any], Secret]:
    """Pop ``api_key`` (and read ``api_key_env``/``api_key_file``) so the key never sits in a
    Struct whose repr could print it."""
    rest = dict(options)
    value = rest.pop("api_key", None)
    if value is not None and not isinstance(value, str | Secret):
        raise HomeskilletError(f"{what}: the option api_key must be a string")
    secret = resolve_secret(what, value=value, env=rest.get("api_key_env", default_env),
                            file=rest.get("api_key_file"))
    assert secret is not None  # required=True raises instead
    return rest, secret


def parse_options(type_: type[T], options: dict[str, Any], provider: str) -> T:
    try:
        return msgspec.convert(options, type_)
    except msgspec.ValidationError as exc:
        raise HomeskilletError(f"{provider} pool options: {exc}; fix the pool's [pools.options] table") from None
