"""The RunPod connector, over GraphQL: price and stock from ``gpuTypes { lowestPrice }``, pods from
``podFindAndDeployOnDemand`` or ``podRentInterruptable`` (a bid per GPU), polled until ``runtime``
is up and the model server answers through RunPod's HTTP proxy, ``podTerminate`` to release.

Why GraphQL and not REST v1: only GraphQL takes a spot bid (``bidPerGpu``) and tells stock per
cloud (``stockStatus``), and REST v1 is deprecated (retired 15 November 2026).

RunPod's quirks, each handled here: refusals arrive as HTTP 200 with ``errors`` (mapped by message
and extension code); stock flips between quote and deploy (try the next offer, then
``NoCapacity``); a refused deploy can still leave an EXITED pod on the account, which we find by
its unique name and terminate; a spot pod outbid mid-inference goes EXITED and the strike ends in
``Preempted``, billed per second at the pod's ``costPerHr``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, ClassVar

import httpx
import msgspec

from ...errors import BadRequest, HomeskilletError, NoCapacity, ProviderError
from ...secrets import Secret, resolve_secret
from ..base import Allocation, AllocationMetrics, AllocationRequest, Health, ProviderOffer, Release, register
from ..rented import ControlPlane, Diagnosis, RentedConnector, check_request, endpoint_url, preempted
from .wire import (
    DEPLOY_ON_DEMAND,
    DEPLOY_SPOT,
    MY_PODS,
    POD,
    PROVIDER,
    QUOTE,
    RUNPOD_URL,
    TERMINATE,
    Answer,
    Cloud,
    GpuTypeRow,
    OfferRef,
    Pod,
    deploy_input,
    error_for,
    is_gone,
    offers_from,
    parse_offer_id,
    quote_variables,
)

__all__ = ["RunPodConnector"]

CLOUDS: dict[str, tuple[Cloud, ...]] = {"ALL": ("SECURE", "COMMUNITY"), "SECURE": ("SECURE",),
                                        "COMMUNITY": ("COMMUNITY",)}


class _PodName(msgspec.Struct):
    id: str
    name: str | None = None


class _Myself(msgspec.Struct):
    pods: list[_PodName] = []


def _describe(resp: httpx.Response) -> str:
    try:
        errors = msgspec.json.decode(resp.content, type=Answer).errors
    except msgspec.DecodeError:
        return f"HTTP {resp.status_code}"
    return "; ".join(e.message for e in errors) or f"HTTP {resp.status_code}"


@register(PROVIDER)
class RunPodConnector(RentedConnector):
    """Options (a pool's ``options`` table) describe the pool's standing pod and how to reach it;
    ``endpoint`` is where a pod's model server answers, from ``{id}`` (the pod id), ``{port}`` and
    ``{origin}`` (the simulator serves it at ``{origin}/proxy/{id}-{port}``)."""

    unsupported: ClassVar[dict[str, str]] = {}

    def __init__(self, *, base_url: str = RUNPOD_URL, api_key: str | Secret | None = None,
                 api_key_env: str = "RUNPOD_API_KEY", api_key_file: str | None = None, model: str = "",
                 gpu_type: str = "", gpu_count: int = 1, min_vram_mb: int = 0, max_usd_per_hour: float = 0.0,
                 cloud_type: str = "ALL", region: str = "", interruptible: bool = False,
                 bid_usd_per_hour: float = 0.0, image: str = "vllm/vllm-openai:latest", container_disk_gb: int = 40,
                 volume_gb: int = 0, port: int = 8000, docker_args: str = "", min_vcpu: int = 0,
                 min_memory_gb: int = 0, endpoint: str = "https://{id}-{port}.proxy.runpod.net",
                 max_offers: int = 3, poll_s: float = 5.0, ready_timeout_s: float = 1200.0, timeout_s: float = 30.0,
                 infer_timeout_s: float = 300.0, quote_ttl_s: float = 2.0, retries: int = 3,
                 max_retry_wait_s: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        if cloud_type not in CLOUDS:
            raise BadRequest(f"runpod options: cloud_type {cloud_type!r} is not one of {', '.join(CLOUDS)}")
        if not 1 <= port <= 65535 or container_disk_gb < 1 or volume_gb < 0 or poll_s <= 0 or max_offers < 1:
            raise BadRequest("runpod options: port must be 1..65535, container_disk_gb >= 1, volume_gb >= 0, "
                             f"poll_s and max_offers positive (got port={port}, container_disk_gb="
                             f"{container_disk_gb}, volume_gb={volume_gb}, poll_s={poll_s}, max_offers={max_offers})")
        endpoint_url(endpoint, base_url, id="pod", port=port)  # a bad template fails now
        standing = AllocationRequest(model=model, gpu_model=gpu_type, count=gpu_count, min_vram_mb=min_vram_mb,
                                     max_usd_per_hour=max_usd_per_hour, region=region, preemptible=interruptible,
                                     bid_usd_per_hour=bid_usd_per_hour, ready_timeout_s=ready_timeout_s,
                                     workload="standing")
        check_request(PROVIDER, standing)
        key = resolve_secret("runpod api key", value=api_key, env=api_key_env, file=api_key_file)
        assert key is not None  # required=True raises instead
        super().__init__(standing=standing, client=client, infer_timeout_s=infer_timeout_s, quote_ttl_s=quote_ttl_s)
        self.api = ControlPlane(PROVIDER, base_url, key, self.client, describe=_describe, timeout_s=timeout_s,
                                retries=retries, max_wait_s=max_retry_wait_s)
        self.clouds = CLOUDS[cloud_type]
        self.image, self.container_disk_gb, self.volume_gb, self.port = image, container_disk_gb, volume_gb, port
        self.docker_args, self.min_vcpu, self.min_memory_gb = docker_args, min_vcpu, min_memory_gb
        self.endpoint, self.max_offers, self.poll_s = endpoint, max_offers, poll_s

    # -- GraphQL --------------------------------------------------------------------------------
    async def _gql(self, document: str, variables: dict[str, Any] | None = None) -> Answer:
        """One request; a failure in ``errors`` (HTTP 200 included) is raised unless data came back."""
        resp = await self.api.send("POST", "/graphql", {"query": document, "variables": variables or {}})
        try:
            answer = msgspec.json.decode(resp.content, type=Answer)
        except msgspec.DecodeError:
            answer = Answer()
            if resp.status_code < 400:
                raise ProviderError("unreadable GraphQL answer", provider=PROVIDER,
                                    http_status=resp.status_code) from None
        if resp.status_code >= 400 or (answer.errors and not any(answer.field(k) for k in answer.data or {})):
            raise error_for(resp.status_code, answer.errors)
        return answer

    async def _pod(self, pod_id: str) -> Pod | None:
        raw = (await self._gql(POD, {"input": {"podId": pod_id}})).field("pod")
        return msgspec.json.decode(raw, type=Pod) if raw is not None else None

    async def _terminate(self, pod_id: str) -> bool:
        """Terminate; False when RunPod no longer knows the pod (already gone counts as done)."""
        resp = await self.api.send("POST", "/graphql", {"query": TERMINATE, "variables": {"input": {"podId": pod_id}}})
        try:
            answer = msgspec.json.decode(resp.content, type=Answer)
        except msgspec.DecodeError:
            answer = Answer()
        if answer.errors and is_gone(answer.errors):
            return False
        if resp.status_code >= 400 or answer.errors:
            raise error_for(resp.status_code, answer.errors)
        return True

    # -- quote ----------------------------------------------------------------------------------
    async def _quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        if want.accelerator != "gpu":
            return []
        check_request(PROVIDER, want)
        raw = (await self._gql(QUOTE, quote_variables(want))).field("gpuTypes")
        rows = msgspec.json.decode(raw, type=list[GpuTypeRow]) if raw is not None else []
        return offers_from(rows, want, self.clouds)

    # -- allocate -------------------------------------------------------------------------------
    async def allocate(self, want: AllocationRequest) -> Allocation:
        check_request(PROVIDER, want, allocating=True)
        if want.offer_id:
            try:
                ref = parse_offer_id(want.offer_id)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            if ref.spot and not want.bid_usd_per_hour:
                raise BadRequest(f"offer {want.offer_id} is spot: set bid_usd_per_hour (for the whole pod) or "
                                 "pick the offer from quote(), which prices it")
            picks = [(ref, want.bid_usd_per_hour / want.count if ref.spot else None, 0)]
        else:
            offers = [o for o in await self._quote(want) if o.preemptible == want.preemptible]
            if not offers:
                raise NoCapacity(f"nothing in stock fits: {want.count}x {want.gpu_model or 'any GPU'}, "
                                 f"{'spot' if want.preemptible else 'on demand'}", provider=PROVIDER)
            picks = [(parse_offer_id(o.offer_id), o.usd_per_hour / want.count if o.preemptible else None, o.vram_mb)
                     for o in offers[: self.max_offers]]
        why: list[str] = []
        deadline = time.monotonic() + want.ready_timeout_s
        for ref, bid_per_gpu, vram in picks:
            try:
                return await self._deploy(ref, bid_per_gpu, vram, want, deadline)
            except NoCapacity as exc:  # stock flipped, bid too low, or the pod died starting
                why.append(f"{ref.gpu_type_id} ({ref.cloud}): {exc.message.removeprefix(PROVIDER + ': ')}")
        raise NoCapacity(f"tried {len(why)} offer(s), none could be deployed: " + "; ".join(why), provider=PROVIDER)

    async def _deploy(self, ref: OfferRef, bid_per_gpu: float | None, vram: int, want: AllocationRequest,
                      deadline: float) -> Allocation:
        name = f"hs-{want.workload or 'strike'}-{uuid.uuid4().hex[:8]}"
        args = self.docker_args or (f"--model {want.model} --port {self.port}" if want.model else "")
        spec = deploy_input(name=name, image=self.image, ref=ref, count=want.count, region=want.region,
                            container_disk_gb=self.container_disk_gb, volume_gb=self.volume_gb, port=self.port,
                            docker_args=args, min_vcpu=self.min_vcpu, min_memory_gb=self.min_memory_gb,
                            bid_per_gpu=bid_per_gpu)
        document, root = (DEPLOY_SPOT, "podRentInterruptable") if ref.spot else (DEPLOY_ON_DEMAND,
                                                                                  "podFindAndDeployOnDemand")
        t_created = time.time()
        try:
            raw = (await self._gql(document, {"input": spec})).field(root)
        except HomeskilletError:
            await asyncio.shield(self._sweep(name))  # a refused deploy may still have left a pod behind
            raise
        if raw is None:
            await asyncio.shield(self._sweep(name))
            raise ProviderError(f"{root} answered without a pod", provider=PROVIDER)
        pod = msgspec.json.decode(raw, type=Pod)
        try:
            pod, url = await self._until_serving(pod.id, deadline, want.ready_timeout_s)
        except BaseException:
            await asyncio.shield(self._cleanup(pod.id))
            raise
        return Allocation(
            allocation_id=pod.id, provider=PROVIDER, endpoint=url, model=want.model, gpu_model=ref.gpu_type_id,
            count=pod.gpuCount, region=want.region, usd_per_hour=pod.costPerHr, preemptible=ref.spot,
            created_at=t_created, detail={"pod_id": pod.id, "name": name, "cloud": ref.cloud,
                                          "bid_per_gpu": bid_per_gpu, "vram_mb": vram},
        )

    async def _sweep(self, name: str) -> None:
        """Terminate every pod of ours called ``name`` (a deploy refused after creating one)."""
        try:
            raw = (await self._gql(MY_PODS)).field("myself")
            pods = msgspec.json.decode(raw, type=_Myself).pods if raw is not None else []
            for p in pods:
                if p.name == name:
                    await self._terminate(p.id)
        except HomeskilletError:
            pass  # the original error is what the caller needs; a leftover pod shows in the account

    async def _cleanup(self, pod_id: str) -> None:
        try:
            await self._terminate(pod_id)
        except HomeskilletError:
            pass

    async def _until_serving(self, pod_id: str, deadline: float, limit_s: float) -> tuple[Pod, str]:
        """Poll until ``runtime`` is up and the model server answers ``/health`` through the proxy."""
        url = endpoint_url(self.endpoint, self.api.base_url, id=pod_id, port=self.port)
        while True:
            pod = await self._pod(pod_id)
            if pod is None:
                raise NoCapacity(f"pod {pod_id} vanished while starting", provider=PROVIDER)
            if pod.desiredStatus != "RUNNING":
                raise NoCapacity(f"pod {pod_id} went {pod.desiredStatus} while starting "
                                 f"({pod.lastStatusChange or 'no reason given'}); terminated it", provider=PROVIDER)
            if pod.runtime is not None and await self._healthy(url, self.api.timeout_s):
                return pod, url
            if time.monotonic() >= deadline:
                raise ProviderError(f"pod {pod_id} was not serving within {limit_s:g}s (runtime "
                                    f"{'up' if pod.runtime else 'null'}); terminated it", provider=PROVIDER)
            await asyncio.sleep(self.poll_s)

    # -- after a failed inference ---------------------------------------------------------------
    async def _diagnose(self, alloc: Allocation, detail: str, seconds: float) -> Diagnosis:
        try:
            pod = await self._pod(alloc.allocation_id)
        except HomeskilletError as exc:
            return Diagnosis(ProviderError(f"pod {alloc.allocation_id}: {detail}; its state is unknown "
                                           f"({exc.message})", provider=PROVIDER), dead=False)
        if pod is not None and pod.desiredStatus == "EXITED" and alloc.preemptible:
            return Diagnosis(preempted(PROVIDER, f"spot pod {pod.id} exited mid-inference "
                                       f"({pod.lastStatusChange or detail})", alloc.usd_per_hour, seconds), dead=True)
        if pod is None or pod.desiredStatus != "RUNNING":
            state = pod.desiredStatus if pod is not None else "gone"
            return Diagnosis(ProviderError(f"pod {alloc.allocation_id} is {state}: {detail}", provider=PROVIDER),
                             dead=True)
        return Diagnosis(ProviderError(f"pod {pod.id} is running but its model server failed: {detail}",
                                       provider=PROVIDER), dead=False)

    # -- release, metrics, health ---------------------------------------------------------------
    async def release(self, allocation: Allocation) -> Release:
        existed = await self._terminate(allocation.allocation_id)
        self.forget(allocation.allocation_id)
        secs = max(0.0, time.time() - allocation.created_at) if allocation.created_at else 0.0
        return Release(allocation_id=allocation.allocation_id,
                       detail={"terminated": existed, "seconds": round(secs, 3),
                               "estimated_usd": round(allocation.usd_per_hour * secs / 3600.0, 6)})

    async def metrics(self, allocation: Allocation) -> AllocationMetrics:
        pod = await self._pod(allocation.allocation_id)
        count, mean = self.stats(allocation.allocation_id)
        gpus = (pod.runtime.gpus or []) if pod is not None and pod.runtime is not None else []
        util = [g.gpuUtilPercent for g in gpus if g.gpuUtilPercent is not None]
        mem = [g.memoryUtilPercent for g in gpus if g.memoryUtilPercent is not None]
        vram = int(allocation.detail.get("vram_mb") or 0)
        status = "released" if pod is None else {"RUNNING": "running" if pod.runtime else "pending",
                                                 "EXITED": "preempted" if allocation.preemptible else "failed"
                                                 }.get(pod.desiredStatus or "", "failed")
        secs = max(0.0, time.time() - allocation.created_at) if allocation.created_at else 0.0
        return AllocationMetrics(
            allocation_id=allocation.allocation_id, status=status,
            gpu_utilization=sum(util) / len(util) / 100.0 if util else None,
            memory_used_mb=sum(m / 100.0 * vram for m in mem) if mem and vram else None,
            inference_count=count, average_latency_ms=mean,
            uptime_s=float(pod.runtime.uptimeInSeconds or 0) if pod is not None and pod.runtime else 0.0,
            cost_usd=round(allocation.usd_per_hour * secs / 3600.0, 6),
        )

    async def health(self) -> Health:
        t0 = time.perf_counter()
        try:
            raw = (await self._gql(MY_PODS)).field("myself")
        except HomeskilletError as exc:
            return Health(ok=False, detail=exc.message, latency_ms=(time.perf_counter() - t0) * 1000.0)
        pods = msgspec.json.decode(raw, type=_Myself).pods if raw is not None else []
        current = self.standing.current
        return Health(ok=True, detail=f"{len(pods)} pod(s) on the account",
                      latency_ms=(time.perf_counter() - t0) * 1000.0, active=self.active,
                      warm_models=[current.model] if current is not None and current.model else [])
