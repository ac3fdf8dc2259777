"""OpenRouter simulator state: catalogue, routing with fallbacks, faults, credits, billing. No HTTP here.

Each model is served by one upstream provider (``hosts``), so ``provider.only / ignore / order`` filter
models. Accepted but without effect, since there is one endpoint per model: ``sort``, ``zdr``,
``quantizations``, ``data_collection``, ``preferred_min_throughput``, ``preferred_max_latency``.
"""

from __future__ import annotations

import string
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from homeskillet.sims.base import SimConfig, SimRandom, count_tokens, sim_completion
from homeskillet.sims.openrouter.wire import (
    Architecture,
    ChatRequest,
    Generation,
    Message,
    Model,
    OpenRouterError,
    Pricing,
    ProviderPrefs,
    TopProvider,
    Usage,
)

__all__ = ["CREDITS_URL", "KNOWN_PARAMETERS", "OpenRouterSim", "Run", "default_catalogue"]

CREDITS_URL = "https://openrouter.ai/settings/credits"
# request keys that count as "parameters" for provider.require_parameters
KNOWN_PARAMETERS = frozenset(
    "max_tokens temperature top_p top_k min_p top_a seed stop frequency_penalty presence_penalty "
    "repetition_penalty logit_bias logprobs top_logprobs response_format structured_outputs tools "
    "tool_choice reasoning".split()
)
_SAMPLING = (
    "max_tokens temperature top_p top_k stop seed frequency_penalty presence_penalty repetition_penalty"
)
_TOOLS = " tools tool_choice response_format"
# id, name, host, tokenizer, context, max completion, moderated, USD per prompt / completion token, params
_CATALOGUE = [
    ("anthropic/claude-3-opus", "Anthropic: Claude 3 Opus", "anthropic", "Claude", 200_000, 4096, True,
     "0.000015", "0.000075", "max_tokens temperature top_p top_k stop tools tool_choice"),
    ("openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", "openai", "GPT", 128_000, 16_384, True,
     "0.00000015", "0.0000006", _SAMPLING + _TOOLS + " logit_bias logprobs top_logprobs structured_outputs"),
    ("meta-llama/llama-3.1-8b-instruct", "Meta: Llama 3.1 8B Instruct", "deepinfra", "Llama3", 131_072,
     16_384, False, "0.00000002", "0.00000003", _SAMPLING + _TOOLS + " min_p"),
    ("mistralai/mistral-7b-instruct", "Mistral: Mistral 7B Instruct", "together", "Mistral", 32_768,
     16_384, False, "0.000000028", "0.000000054", _SAMPLING),
    ("qwen/qwen-2.5-72b-instruct", "Qwen2.5 72B Instruct", "deepinfra", "Qwen", 32_768, 16_384, False,
     "0.00000012", "0.00000039", _SAMPLING + _TOOLS),
    ("google/gemma-2-9b-it", "Google: Gemma 2 9B", "together", "Gemini", 8192, 8192, False,
     "0.00000003", "0.00000009", _SAMPLING),
]  # fmt: skip


def default_catalogue() -> tuple[list[Model], dict[str, str]]:
    """The built-in models and, per model id, the upstream provider slug that serves it."""
    models = [
        Model(id=mid, canonical_slug=mid, name=name, created=1_720_000_000, context_length=ctx,
              architecture=Architecture(tokenizer=tok), pricing=Pricing(prompt=p, completion=c),
              top_provider=TopProvider(context_length=ctx, max_completion_tokens=mx, is_moderated=mod),
              supported_parameters=params.split())
        for mid, name, _, tok, ctx, mx, mod, p, c, params in _CATALOGUE
    ]  # fmt: skip
    return models, {row[0]: row[2] for row in _CATALOGUE}


def _text(message: Message) -> str:
    if isinstance(message.content, list):  # OpenAI content parts: keep the text ones
        return " ".join(str(p.get("text", "")) for p in message.content if p.get("type") == "text")
    return message.content or ""


def _cost(pricing: Pricing, prompt_tokens: int, completion_tokens: int) -> float:
    """Decimal arithmetic on the decimal-string prices, so a bill adds up to the catalogue exactly."""
    total = Decimal(pricing.prompt) * prompt_tokens + Decimal(pricing.completion) * completion_tokens
    return float(total + Decimal(pricing.request))


@dataclass
class Run:
    """One completion decided (model chosen, text fixed) but not yet delivered or billed."""

    id: str
    model: Model
    host: str
    created: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_ms: float
    error: str = ""  # the model failed after the request was accepted (finish_reason "error")


class OpenRouterSim:
    """All simulator state, reachable as ``app.state.sim`` for introspection."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.rng = SimRandom(config)
        self.clock: Callable[[], float] = clock or time.time
        models, hosts = default_catalogue()
        if "models" in config.extra:  # a full replacement catalogue
            models = msgspec.convert(config.extra["models"], list[Model])
        self.models = {m.id: m for m in models}
        # the upstream provider serving each model: extra["hosts"], else built-in, else the author prefix
        self.hosts = {m.id: m.id.split("/")[0] for m in models} | hosts | config.extra.get("hosts", {})
        self.down_models = set(config.extra.get("down_models", []))  # always 503: a model outage
        self.credits_usd = float(config.extra.get("credits_usd", 100.0))
        self.usage_usd = 0.0
        self.spent_by_model: defaultdict[str, float] = defaultdict(float)
        self.generations: dict[str, Generation] = {}
        self.counters: Counter[str] = Counter()
        self.slept_ms = 0.0

    def check_key(self, header: str) -> None:
        if not header:
            raise OpenRouterError(401, "No auth credentials found")
        if header != f"Bearer {self.config.api_key}":
            raise OpenRouterError(401, "User not found.")

    async def sleep_ms(self, ms: float) -> None:
        self.slept_ms += ms
        await self.rng.sleep_ms(ms)

    def rate_limit(self) -> None:
        """Key-level rate limit: it ends the request, there is no fallback from it."""
        if self.rng.chance(self.config.faults.rate_limit_rate):
            wait = self.config.extra.get("retry_after_s", 1)
            raise OpenRouterError(429, "Rate limit exceeded: too many requests for this key",
                                  headers={"Retry-After": str(wait)} if wait is not None else None)

    async def upstream_faults(self, model: Model) -> None:
        """One attempt's upstream failures; each lets ``models`` fall back to the next model."""
        f, meta = self.config.faults, {"provider_name": self.hosts[model.id]}
        if model.id in self.down_models or self.rng.chance(f.unavailable_rate):
            raise OpenRouterError(503, f"No instances available for {model.id}", meta)
        if self.rng.chance(f.timeout_rate):
            await self.sleep_ms(f.timeout_s * 1000)
            raise OpenRouterError(408, "Request timed out", meta)
        if self.rng.chance(float(self.config.extra.get("upstream_error_rate", 0.0))):
            raise OpenRouterError(502, "Provider returned error", meta | {"raw": "simulated upstream error"})

    def _exclusions(self, m: Model, prefs: ProviderPrefs, params: set[str]) -> Iterator[str]:
        """Why ``provider`` preferences rule model ``m`` out (nothing if it is eligible)."""
        host, mp = self.hosts[m.id], prefs.max_price
        if prefs.only is not None and host not in prefs.only:
            yield f"provider {host} is not in provider.only"
        if host in (prefs.ignore or []):
            yield f"provider {host} is in provider.ignore"
        if prefs.order is not None and not prefs.allow_fallbacks and host not in prefs.order:
            yield f"provider {host} is not in provider.order and allow_fallbacks is false"
        if prefs.require_parameters and (missing := params - set(m.supported_parameters)):
            yield f"does not support {sorted(missing)}"
        if mp is None:
            return
        for kind, limit in (("prompt", mp.prompt), ("completion", mp.completion)):
            per_million = Decimal(getattr(m.pricing, kind)) * 1_000_000
            if limit is not None and per_million > Decimal(str(limit)):
                yield f"{kind} price ${per_million:.4f}/M exceeds max_price.{kind} ${limit}/M"
        if mp.request is not None and Decimal(m.pricing.request) > Decimal(str(mp.request)):
            yield f"request price ${m.pricing.request} exceeds max_price.request ${mp.request}"

    def route(self, req: ChatRequest, params: set[str], prompt_tokens: int) -> list[Model]:
        """The models to try, in order, after ``provider`` filtering; 400/404 when none is left."""
        ids = list(dict.fromkeys([*([req.model] if req.model else []), *(req.models or [])]))
        if not ids:
            raise OpenRouterError(400, "No models provided: set 'model' or 'models'")
        if unknown := [i for i in ids if i not in self.models]:
            raise OpenRouterError(400, f"{unknown[0]} is not a valid model ID")
        prefs = req.provider or ProviderPrefs()
        need = prompt_tokens + (req.max_tokens or req.max_completion_tokens or 0)
        keep, why, too_long = [], [], 0
        for m in (self.models[i] for i in ids):
            if need > m.context_length:
                too_long += 1
                why.append(f"{m.id}: maximum context length is {m.context_length} tokens, requested {need}")
            elif reasons := list(self._exclusions(m, prefs, params)):
                why.append(f"{m.id}: {'; '.join(reasons)}")
            else:
                keep.append(m)
        if not keep:  # 503 "no provider meets your routing requirements" (§10), 400 for context length
            status = 400 if too_long == len(ids) else 503
            raise OpenRouterError(status, "No endpoints found matching your request: " + "; ".join(why))
        return keep

    def check_credits(self, model: Model, prompt_tokens: int, max_tokens: int | None) -> None:
        remaining = self.credits_usd - self.usage_usd
        if remaining <= 0:
            raise OpenRouterError(402, f"Insufficient credits. Add more using {CREDITS_URL}")
        if max_tokens and _cost(model.pricing, prompt_tokens, max_tokens) > remaining:
            per_token = float(model.pricing.completion) or 1.0
            afford = max(0, int((remaining - _cost(model.pricing, prompt_tokens, 0)) / per_token))
            raise OpenRouterError(
                402,
                f"This request requires more credits, or fewer max_tokens. You requested up to {max_tokens} "
                f"tokens, but can only afford {afford}. To increase, visit {CREDITS_URL}",
            )

    def moderate(self, model: Model, prompt: str) -> None:
        """403 when a moderated model's input holds one of ``extra["flagged_words"]``."""
        if not model.top_provider.is_moderated:
            return
        lowered = prompt.lower()
        for word in self.config.extra.get("flagged_words", []):
            if word.lower() in lowered:
                raise OpenRouterError(403, f"{model.id} requires moderation on {self.hosts[model.id]}. "
                                           "Your input was flagged for \"harassment\".",
                                      {"reasons": ["harassment"], "flagged_input": prompt[:100],
                                       "provider_name": self.hosts[model.id], "model_slug": model.id})

    async def run(self, req: ChatRequest, params: set[str]) -> Run:
        """Route, check credits, try each model in order until one has no upstream fault."""
        prompt = "\n".join(f"{m.role}: {_text(m)}" for m in req.messages)
        prompt_tokens = count_tokens(prompt)
        max_tokens = req.max_tokens or req.max_completion_tokens
        candidates = self.route(req, params, prompt_tokens)
        self.moderate(candidates[0], prompt)
        self.check_credits(candidates[0], prompt_tokens, max_tokens)
        for i, model in enumerate(candidates):
            try:
                await self.upstream_faults(model)
            except OpenRouterError:
                self.counters["upstream_errors"] += 1
                if i == len(candidates) - 1:
                    raise  # nothing ran, nothing is charged
                continue
            return self._draft(model, prompt, prompt_tokens, max_tokens)
        raise AssertionError("unreachable")

    def _draft(self, model: Model, prompt: str, prompt_tokens: int, max_tokens: int | None) -> Run:
        limit = max_tokens or model.top_provider.max_completion_tokens or 4096
        full = sim_completion(model.id, prompt, 10**6).split(" ")
        words = sim_completion(model.id, prompt, limit).split(" ")
        while words and count_tokens(" ".join(words)) > limit:  # never more tokens than max_tokens
            words.pop()
        text, completion = " ".join(words), count_tokens(" ".join(words))
        suffix = "".join(self.rng.rng.choices(string.ascii_letters + string.digits, k=20))
        now = int(self.clock())
        if self.rng.chance(float(self.config.extra.get("error_finish_rate", 0.0))):  # accepted, then failed
            return Run(id=f"gen-{now}-{suffix}", model=model, host=self.hosts[model.id], created=now, text="",
                       prompt_tokens=prompt_tokens, completion_tokens=0, finish_reason="error",
                       latency_ms=self.rng.latency_ms(0, model.id), error="Provider returned error")
        return Run(id=f"gen-{now}-{suffix}", model=model, host=self.hosts[model.id], created=now, text=text,
                   prompt_tokens=prompt_tokens, completion_tokens=completion,
                   finish_reason="stop" if words == full else "length",
                   latency_ms=self.rng.latency_ms(completion, model.id))  # fmt: skip

    def charge(self, run: Run, *, streamed: bool, completion_tokens: int | None = None) -> Usage:
        """Bill the model that ran and record the generation; a cancelled stream pays what it got."""
        tokens = run.completion_tokens if completion_tokens is None else completion_tokens
        # no charge for a completion that failed with zero tokens (§10)
        cost = 0.0 if run.finish_reason == "error" and tokens == 0 else _cost(run.model.pricing, run.prompt_tokens,
                                                                               tokens)
        self.usage_usd += cost
        self.spent_by_model[run.model.id] += cost
        self.counters["completions"] += 1
        self.generations[run.id] = Generation(
            id=run.id, model=run.model.id, provider_name=run.host, total_cost=cost, usage=cost,
            created_at=datetime.fromtimestamp(run.created, UTC).isoformat(), tokens_prompt=run.prompt_tokens,
            tokens_completion=tokens, native_tokens_prompt=run.prompt_tokens, native_tokens_completion=tokens,
            latency=round(run.latency_ms), generation_time=round(run.latency_ms), streamed=streamed,
            cancelled=completion_tokens is not None, finish_reason=run.finish_reason,
            native_finish_reason=run.finish_reason,
        )  # fmt: skip
        report = self.config.extra.get("report_cost", True)  # false: a gateway that reports no cost
        return Usage(prompt_tokens=run.prompt_tokens, completion_tokens=tokens,
                     total_tokens=run.prompt_tokens + tokens, cost=cost if report else msgspec.UNSET)  # fmt: skip
