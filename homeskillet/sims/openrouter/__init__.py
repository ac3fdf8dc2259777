"""OpenRouter simulator: OpenAI-compatible chat with ``models`` fallbacks, ``provider`` routing, credits.

Speaks ``provider-apis.md`` §10 under ``/api/v1``, so the official openai SDK is a client. Choices
made where the sources leave room:

- no model left after ``provider`` filtering (``max_price``, ``only``/``ignore``/``order``,
  ``require_parameters``) is **503** "No endpoints found ...", the status §10 and OpenRouter's
  error list give for "no provider meets your routing requirements"; when every model is ruled
  out only by context length it is **400**;
- a moderated model (``top_provider.is_moderated``) whose input holds a word of
  ``extra["flagged_words"]`` is **403** with the moderation metadata;
- ``rate_limit_rate`` is a key-level **429** (no fallback) with ``Retry-After``
  (``extra["retry_after_s"]``, default 1; None sends none). ``unavailable_rate`` and
  ``extra["down_models"]`` (503), ``timeout_rate`` (408 after hanging ``timeout_s``) and
  ``extra["upstream_error_rate"]`` (502) fail one upstream attempt: ``models`` falls back to the
  next model, and the last failure is returned;
- **402** when credits (``extra["credits_usd"]``, default 100) are spent, or when ``max_tokens``
  at the chosen model's price cannot be afforded; failed requests are never charged;
- ``extra["error_finish_rate"]``: the model fails after the request was accepted: HTTP 200 with
  ``finish_reason: "error"``, zero completion tokens and an ``error`` object (in the body, or in
  the last stream chunk); such a completion is not charged;
- ``usage.cost`` is always reported, as OpenRouter now does, unless ``extra["report_cost"]`` is
  false (a gateway that reports tokens only).

A package, like ``hostedai``: wire bodies, state (no HTTP) and the HTTP adapter.
"""

from homeskillet.sims.openrouter.app import create_app
from homeskillet.sims.openrouter.state import OpenRouterSim, Run, default_catalogue
from homeskillet.sims.openrouter.wire import Model, OpenRouterError

__all__ = ["Model", "OpenRouterError", "OpenRouterSim", "Run", "create_app", "default_catalogue"]
