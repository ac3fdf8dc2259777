"""API keys given through ``api_key_env`` reach the providers and nothing else: not the logs
(structlog, stdlib logging, stdout, stderr), not an error message, not a repr of a connector or
a pool spec, not a byte on NATS, through a run that serves, preempts, reserves and fails auth.
"""

from __future__ import annotations

import logging
import time
import uuid

import msgspec
import nats
import pytest
import structlog
from e2e_world import MODEL, hostedai, hostedai_pool, sim_config, vast_pool, vastai
from nats.aio.msg import Msg

from homeskillet.errors import HomeskilletError, NoPoolError
from homeskillet.providers.hostedai import HostedAIConnector
from homeskillet.providers.vastai import VastConnector
from homeskillet.testing import start_runtime
from homeskillet.wire import AllocationRequest, ReserveRequest

OFFERS = [{"id": 7, "gpu_name": "RTX 4090"}, {"id": 8, "gpu_name": "RTX 4090"}]


def _reprs(obj: object) -> str:
    """repr of an object and of everything one and two attributes deep (where keys would hide)."""
    out = [repr(obj)]
    for value in getattr(obj, "__dict__", {}).values():
        out.append(repr(value))
        out += [repr(v) for v in getattr(value, "__dict__", {}).values()]
    return "\n".join(out)


async def test_api_keys_from_the_environment_never_leak(nats_url: str, monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    hkey, vkey = f"hk-{uuid.uuid4().hex}", f"vk-{uuid.uuid4().hex}"
    monkeypatch.setenv("HS_E2E_HOSTEDAI_KEY", hkey)
    monkeypatch.setenv("HS_E2E_VAST_KEY", vkey)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore too, at their most talkative
    seen: list[str] = []  # everything that must not hold a key
    wire: list[bytes] = []
    hosted_key, vast_key = {"api_key_env": "HS_E2E_HOSTEDAI_KEY"}, {"api_key_env": "HS_E2E_VAST_KEY"}
    skew = [0.0]  # hosted.ai's clock, moved forward to expire its tokens
    with hostedai(sim_config(api_key=hkey, preempt_rate=1.0), clock=lambda: time.time() + skew[0]) as (hsim, hurl), \
            vastai(sim_config(api_key=vkey, extra={"offers": OFFERS})) as (vsim, vurl):
        pools = [hostedai_pool(hurl, "preemptible", key=hosted_key), hostedai_pool(hurl, "standard", key=hosted_key),
                 vast_pool(vurl, key=vast_key)]
        with structlog.testing.capture_logs() as logs:
            async with start_runtime(nats_url, pools, live_interval_ms=200) as rt:
                spy = await nats.connect(nats_url)

                async def keep(msg: Msg) -> None:
                    wire.append(msg.data)

                await spy.subscribe(f"{rt.subjects.prefix}.>", cb=keep)
                # Served (after an eviction on hosted.ai), then on Vast.ai, then a reservation.
                evicted = await rt.ask(prompt="keys?", covenant=MODEL, overrides={
                    "resources": {"pool_class": "preemptible"}, "fallback": {"steps": ["standard", "fail"]}})
                assert evicted.fragments[0].pool == "hostedai/standard-us-east" and evicted.fragments[0].tried
                on_vast = await rt.ask(prompt="keys!", covenant=MODEL, overrides={
                    "resources": {"pool_class": "marketplace"}, "fallback": {"steps": ["fail"]}})
                assert on_vast.fragments[0].pool == "vastai/rtx4090"
                res = await rt.gateway.reserve(ReserveRequest(provider="hostedai", pool_id="standard-us-east",
                                                              model=MODEL, tenant="acme"))
                seen.append(repr(await rt.gateway.release(res.reservation_id, "acme")))
                # The providers rotate the keys: everything now fails authentication.
                hsim.config.api_key, vsim.config.api_key = "rotated-h", "rotated-v"
                skew[0] = 2 * hsim.token_ttl_s  # and hosted.ai's tokens expire: the old key must be sent again
                with pytest.raises(HomeskilletError) as refused:
                    await rt.gateway.reserve(ReserveRequest(provider="auto", model=MODEL, tenant="acme"))
                assert isinstance(refused.value, NoPoolError)
                assert sum("credential refused" in t for t in refused.value.tried) == 2, refused.value.tried
                seen += [refused.value.message, repr(refused.value), *refused.value.tried]
                for host in rt.hosts.values():
                    seen += [_reprs(host.connector), repr(host.spec), repr(host.live)]
                seen += [repr(rt.settings), msgspec.json.encode(rt.settings).decode()]
                await spy.flush()
                await spy.close()
        # Connectors built directly, refused by the provider: the errors name the problem, not the key.
        hconn = HostedAIConnector(base_url=hurl, api_key_env="HS_E2E_HOSTEDAI_KEY", pool_id="standard-us-east")
        vconn = VastConnector(base_url=vurl + "/api/v0", api_key_env="HS_E2E_VAST_KEY", poll_s=0.02)
        # (Vast.ai's offer search needs no key, so the refusal comes at the rental.)
        for conn, call in ((hconn, hconn.quote), (vconn, vconn.allocate)):
            try:
                with pytest.raises(HomeskilletError) as info:
                    await call(AllocationRequest(model=MODEL, ready_timeout_s=5.0))
                assert info.value.code == "provider_auth", info.value.message
                seen += [str(info.value), repr(info.value), repr(info.value.args), _reprs(conn),
                         (await conn.health()).detail]
            finally:
                await conn.close()
    out, err = capfd.readouterr()
    seen += [out, err, caplog.text, repr(logs), *(m.decode(errors="replace") for m in wire)]
    assert wire and logs and any(e.get("event") == "allocated" for e in logs)  # there was plenty to look at
    everything = "\n".join(seen)
    for key in (hkey, vkey):
        assert key not in everything
        assert key.split("-", 1)[1][:16] not in everything  # not even a slice of it
