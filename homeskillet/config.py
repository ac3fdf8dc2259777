"""Settings for one Homeskillet process, from defaults, a strict TOML file and the environment.

``pools`` lists the pools this process hosts (agent + strike workers). The default is this machine's
real model (``mlx/local``: SmolLM2-135M-Instruct on mlx-lm); ``echo_pools`` are simulated capacity
for tests and benchmarks, added by ``up --echo-pools``. (``homeskillet demo`` brings its own fleet.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .auth import AuthSettings, auth_settings_from_env
from .errors import HomeskilletError
from .secrets import resolve_secret
from .strict import StrictError, convert_strict, load_toml

__all__ = ["DistillationSettings", "HttpSettings", "NatsAuth", "PoolSpec", "RetentionSettings", "Settings",
           "TenantSettings", "default_pools", "echo_pools", "load_settings", "local_pools"]


class PoolSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str  # "<provider>/<pool>", e.g. "echo/standard-us-east"
    provider: str  # the connector: echo, mlx, …
    pool_class: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    accelerator: str = "gpu"
    gpu_model: str = ""
    vram_mb: int = 0
    tflops: float = 0.0
    region: str = ""
    preemptible: bool = False
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    usd_per_hour: float = 0.0
    start_ms: float = 1.0  # what the agent predicts before its track record says otherwise
    ms_per_token: float = 0.05
    context_tokens: int = 0  # the served model's context window (prompt + completion); 0 = unknown
    capacity: int = 16  # strikes run at once
    queue_limit: int = 256  # strikes accepted beyond capacity, waiting for a slot
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # passed to the connector


class TenantSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``[tenants.<name>]`` (``[tenants."*"]``: every tenant not named). Unset = no limit.

    Budgets and rate limits are shared by every orchestrator on the NATS server (JetStream KV)."""

    daily_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None  # UTC day
    monthly_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None  # UTC calendar month
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None  # prompt + completion tokens


class NatsAuth(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How this process authenticates to NATS: one of user/password, token, nkey seed, creds file.
    Each secret may also come from a file (``*_file``) or the environment (HOMESKILLET_NATS_USER,
    HOMESKILLET_NATS_PASSWORD, HOMESKILLET_NATS_TOKEN, HOMESKILLET_NATS_NKEY_SEED_FILE)."""

    user: str = ""
    password: str = ""
    password_file: str = ""
    token: str = ""
    token_file: str = ""
    nkey_seed_file: str = ""  # an "SU…" user seed, as written by `nsc` or `nk -gen user`
    creds_file: str = ""  # a decentralised-auth .creds file (JWT + seed)

    def __repr__(self) -> str:  # keep secrets out of logs
        return (f"NatsAuth(user={self.user!r}, password={'****' if self.password else ''}, "
                f"token={'****' if self.token else ''}, nkey_seed_file={self.nkey_seed_file!r}, "
                f"creds_file={self.creds_file!r})")

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``; a file that cannot be read is a clear error."""
        opts: dict[str, Any] = {}
        user = self.user or os.environ.get("HOMESKILLET_NATS_USER", "")
        password = resolve_secret("NATS password", value=self.password, file=self.password_file or None,
                                  env="HOMESKILLET_NATS_PASSWORD", required=False)
        token = resolve_secret("NATS token", value=self.token, file=self.token_file or None,
                               env="HOMESKILLET_NATS_TOKEN", required=False)
        seed = self.nkey_seed_file or os.environ.get("HOMESKILLET_NATS_NKEY_SEED_FILE", "")
        if user:
            if password is None:
                raise HomeskilletError(f"NATS user {user!r} has no password: set nats_auth.password(_file) "
                                       "or $HOMESKILLET_NATS_PASSWORD")
            opts.update(user=user, password=password.reveal())
        if token is not None:
            opts["token"] = token.reveal()
        for path, what, key in ((seed, "nkey seed", "nkeys_seed"), (self.creds_file, "creds", "user_credentials")):
            if path:
                if not Path(path).expanduser().is_file():
                    raise HomeskilletError(f"NATS {what} file {path} does not exist")
                opts[key] = str(Path(path).expanduser())
        if len({"user", "token", "nkeys_seed", "user_credentials"} & opts.keys()) > 1:
            raise HomeskilletError(f"NATS auth: use one of user/password, token, nkey seed or creds file, "
                                   f"not {sorted({'user', 'token', 'nkeys_seed', 'user_credentials'} & opts.keys())}")
        return opts


class HttpSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    listen: str = ""  # "HOST:PORT"; "" = no HTTP server
    max_body_bytes: int = 2 << 20  # a larger request body gets 413 before it is read whole
    public_url: str = ""  # advertised in /openapi.json servers; "" = relative
    reservation_ports: list[int] = msgspec.field(default_factory=lambda: [3000, 15000])  # local_port range


class DistillationSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The seeds' ``[distillation]`` table and ``DISTILLATION_*`` variables; they override covenants."""

    enabled: bool = True  # DISTILLATION_ENABLED: false switches every [distill] table off
    mode: str = ""  # DISTILLATION_MODE: async | sync, for every covenant ("" = each covenant's own)
    confidence_threshold: float | None = None  # CONFIDENCE_THRESHOLD
    max_training_examples: int | None = None  # MAX_TRAINING_EXAMPLES
    auto_train: bool | None = None
    training_frequency: int | None = None
    live_window: int = 200  # live verdicts kept per student

    @classmethod
    def from_env(cls, base: DistillationSettings | None = None) -> DistillationSettings:
        """The ``DISTILLATION_*``, ``CONFIDENCE_THRESHOLD`` and ``MAX_TRAINING_EXAMPLES`` variables on ``base``."""
        s = base or cls()
        env = os.environ
        over: dict[str, Any] = {}
        if "DISTILLATION_ENABLED" in env:
            over["enabled"] = env["DISTILLATION_ENABLED"].strip().lower() in ("1", "true", "yes", "on")
        if env.get("DISTILLATION_MODE"):
            over["mode"] = env["DISTILLATION_MODE"].strip().lower()
        if env.get("CONFIDENCE_THRESHOLD"):
            over["confidence_threshold"] = float(env["CONFIDENCE_THRESHOLD"])
        if env.get("MAX_TRAINING_EXAMPLES"):
            over["max_training_examples"] = int(env["MAX_TRAINING_EXAMPLES"])
        out = msgspec.structs.replace(s, **over)
        if out.mode not in ("", "async", "sync"):
            raise ValueError(f"DISTILLATION_MODE={out.mode!r}: use async or sync")
        if out.confidence_threshold is not None and not 0.0 <= out.confidence_threshold <= 1.0:
            raise ValueError(f"CONFIDENCE_THRESHOLD={out.confidence_threshold} is outside 0..1")
        if out.max_training_examples is not None and out.max_training_examples < 1:
            raise ValueError(f"MAX_TRAINING_EXAMPLES={out.max_training_examples} must be ≥ 1")
        return out


Cap = Annotated[int, msgspec.Meta(ge=1)]


class RetentionSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[retention]``: caps on what a long-running process keeps per query after the query has
    ended (each structure drops its oldest entry past its cap; see docs/architecture.md, "Memory
    bounds"). The result cache has its own cap, ``cache_max_entries``."""

    results: Cap = 10_000  # answers kept for GET /api/v1/results/{query_id}
    strike_results: Cap = 4096  # per pool host: finished strikes remembered so a redelivery is not run again
    strike_cancels: Cap = 4096  # per pool host: cancel requests remembered (one may arrive before its strike)
    ledger_settled: Cap = 20_000  # settled strike ids the ledger actor remembers (a second settle charges nothing)
    reservations_ended: Cap = 1000  # released or expired reservations still answered by id


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats: list[str] = msgspec.field(default_factory=list)  # empty: start an embedded server
    data_dir: str = ""  # embedded server's JetStream directory; "" = the user's state dir
    prefix: str = "hs"
    covenants_dir: str = ""
    pools: list[PoolSpec] = msgspec.field(default_factory=lambda: default_pools())
    bid_window_ms: int = 50  # how long a call for proposals collects bids
    quote_interval_ms: int = 500  # how often pool agents publish standing quotes
    quote_ttl_ms: int = 3000
    live_interval_ms: int = 5000  # how often a pool host asks its provider for live prices and capacity
    heartbeat_ms: int = 250  # a strike running longer says it is alive this often
    silence_ms: int = 1500  # a strike silent this long is taken as lost
    max_prompt_bytes: int = 1 << 20
    max_fragments: int = 16
    parked_claim_ttl_s: float = 10.0  # a parked query whose owner is silent this long is taken over
    journal_queries: bool = True  # record every NATS query so a peer answers it if this process dies
    nats_replicas: int = 0  # replicas of every JetStream stream and KV bucket; 0 = 3 on a cluster, else 1
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)  # JWT on HTTP, MCP and NATS
    nats_auth: NatsAuth = msgspec.field(default_factory=NatsAuth)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    tenants: dict[str, TenantSettings] = msgspec.field(default_factory=dict)
    cache_embedder: str = "hashing"  # semantic cache embedding: "hashing" or "minilm" (the [embed] extra)
    cache_max_entries: Cap = 4096  # result cache entries, LRU over all tenants (a semantic one: ~10-17 KiB)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    distillation: DistillationSettings = msgspec.field(default_factory=DistillationSettings)  # [distillation]


def local_pools() -> list[PoolSpec]:
    """This machine's real model: SmolLM2-135M-Instruct on mlx-lm (and LoRA adapters over it)."""
    return [
        PoolSpec(name="mlx/local", provider="mlx", pool_class="local", models=["smollm2-135m", "smollm2-135m+*"],
                 accelerator="cpu", vram_mb=0, tflops=0.5, region="local", start_ms=400, ms_per_token=60.0,
                 context_tokens=8192, capacity=2, queue_limit=32),
    ]


def echo_pools(echo_delay_ms: float = 0.0) -> list[PoolSpec]:
    """Simulated capacity for tests and benchmarks: echo pools posing as hosted.ai's four tiers and a
    marketplace GPU. Their answers are the prompt echoed back, not a model's (``up --echo-pools``)."""
    echo = {"delay_ms": echo_delay_ms}
    return [
        PoolSpec(name="echo/standard-us-east", provider="echo", pool_class="standard", vram_mb=24576,
                 tflops=82, gpu_model="L4", region="us-east", usd_per_mtok_in=0.10, usd_per_mtok_out=0.20,
                 start_ms=15, ms_per_token=0.5, options=echo),
        PoolSpec(name="echo/preemptible-us-east", provider="echo", pool_class="preemptible", vram_mb=16384,
                 tflops=30, gpu_model="T4", region="us-east", preemptible=True, usd_per_mtok_in=0.04,
                 usd_per_mtok_out=0.08, start_ms=25, ms_per_token=0.8, options=echo),
        PoolSpec(name="echo/premium-us-east", provider="echo", pool_class="premium", vram_mb=49152,
                 tflops=180, gpu_model="L40S", region="us-east", usd_per_mtok_in=0.50, usd_per_mtok_out=1.50,
                 start_ms=10, ms_per_token=0.3, options=echo),
        PoolSpec(name="echo/dedicated-us-east", provider="echo", pool_class="dedicated", vram_mb=81920,
                 tflops=990, gpu_model="H100 SXM", region="us-east", usd_per_hour=4.0, start_ms=5,
                 ms_per_token=0.2, options=echo),
        PoolSpec(name="echo/marketplace-h100", provider="echo", pool_class="marketplace", vram_mb=81920,
                 tflops=990, gpu_model="H100 SXM", region="us-west", usd_per_hour=2.2, start_ms=40,
                 ms_per_token=0.25, options=echo),
    ]


def default_pools(*, echo: bool = False, echo_delay_ms: float = 0.0) -> list[PoolSpec]:
    """What ``up`` and ``ask`` serve with no ``pools`` configured: the real local model; with
    ``echo``, the simulated echo fleet beside it."""
    return [*(echo_pools(echo_delay_ms) if echo else []), *local_pools()]


def load_settings(path: str | Path | None = None) -> Settings:
    """Defaults, then the TOML file (strict), then the environment: HOMESKILLET_NATS_URL
    (comma-separated URLs) and the JWT_* variables (see ``auth.auth_settings_from_env``)."""
    settings = Settings()
    if path:
        data = load_toml(path)
        tenants = data.pop("tenants", {})
        if not isinstance(tenants, dict):
            raise StrictError(f"{path}: 'tenants' must be a table of [tenants.<name>] tables")
        settings = convert_strict(data, Settings, str(path))
        # Checked one table at a time so an unknown key names its tenant.
        settings.tenants = {name: convert_strict(t if isinstance(t, dict) else {"": t}, TenantSettings,
                                                 f"{path} [tenants.{name}]") for name, t in tenants.items()}
    env = os.environ.get("HOMESKILLET_NATS_URL")
    if env and not settings.nats:
        settings = msgspec.structs.replace(settings, nats=[u.strip() for u in env.split(",") if u.strip()])
    settings.auth = auth_settings_from_env(settings.auth)
    try:
        settings.distillation = DistillationSettings.from_env(settings.distillation)
    except ValueError as exc:
        raise HomeskilletError(f"distillation settings: {exc}") from None
    return settings
