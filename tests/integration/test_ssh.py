"""``ssh/*`` pools through a real OpenSSH ``sshd`` on loopback to ``homeskillet node``.

The sshd is installed when missing (``sshd.py``); the node is the real Ollama API backed by the
real local model. Nothing here is mocked: the prompts cross SSH channels, the node infers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from sshd import Sshd, running_sshd
from toy_model import get_model

from homeskillet.config import PoolSpec, load_settings
from homeskillet.errors import ExtraMissing, HomeskilletError, ProviderAuthError, ProviderError
from homeskillet.node import create_node_app, render_chat
from homeskillet.providers.base import AllocationRequest, InferRequest
from homeskillet.providers.ollama import OllamaConnector
from homeskillet.providers.ssh import SshConnector
from homeskillet.providers.sshmesh import host_aliases, require_asyncssh
from homeskillet.providers.sshtunnel import TunnelTransport
from homeskillet.testing import serve_asgi, start_runtime
from homeskillet.wire import Message

MODEL = "smollm2-135m"
GREEDY = {"num_predict": 12, "temperature": 0}
EXAMPLE = Path(__file__).parents[2] / "examples" / "pools-ssh.toml"
# Installing openssh-server on a clean machine can take a while; each test still waits on events.
pytestmark = pytest.mark.timeout(600)


class Recording:
    """The toy test model (tests/toy_model.py), remembering every prompt exactly as the node passed it."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    @property
    def name(self) -> str:
        return MODEL

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]:
        self.prompts.append(prompt)
        return get_model().stream(prompt, max_tokens, temperature)

    def count_tokens(self, text: str) -> int:
        return get_model().count_tokens(text)


class Node:
    def __init__(self, url: str, gen: Recording) -> None:
        self.url, self.gen = url, gen
        self.port = int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    gen = Recording()
    with serve_asgi(create_node_app(gen, models=[MODEL]), "/api/version") as url:
        yield Node(url, gen)


@pytest.fixture(scope="module")
def ssh_config(sshd: Sshd) -> Path:
    path = sshd.client_config(sshd.dir / "ssh_config", {"node-a": {}, "node-b": {"ServerAliveInterval": "7"}})
    with path.open("a") as f:  # entries that name no node of their own
        f.write("Host *.example.org !bastion\n    User nobody\n\nMatch all\n    Compression no\n")
    return path


def connect(sshd: Sshd, ssh_config: Path, node: Node, **kw: object) -> SshConnector:
    opts: dict[str, object] = {"ssh_config": str(ssh_config), "known_hosts": str(sshd.known_hosts),
                               "remote_port": node.port} | kw
    return SshConnector(**opts)  # type: ignore[arg-type]


def req(prompt: str, **kw: object) -> InferRequest:
    return msgspec.convert({"strike_id": "s", "model": MODEL, "prompt": prompt, "max_tokens": 12, **kw}, InferRequest)


# -- the node table ------------------------------------------------------------------------------


def test_host_aliases_are_the_concrete_host_names() -> None:
    text = 'Host a b\n  HostName x\nhost=c\n# Host commented\nHost *.lab "d e" !f g? a\nMatch host h\nHost\t"i"\n'
    assert host_aliases(text) == ["a", "b", "c", "d e", "i"]


async def test_node_table_is_read_from_the_config(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    conn = connect(sshd, ssh_config, node)
    try:
        table = {n.alias: n for n in conn.table()}
        assert list(table) == ["node-a", "node-b"]
        a = table["node-a"]
        assert (a.host, a.port, a.user) == ("127.0.0.1", sshd.port, sshd.user)
        assert a.identity_files == [str(sshd.client_key)] and a.known_hosts == [str(sshd.known_hosts)]
        assert (a.keepalive_s, a.keepalive_count) == (15.0, 3)  # our default: asyncssh's is "off"
        assert table["node-b"].keepalive_s == 7.0  # ServerAliveInterval from the config file
        assert not any(link.connected for link in (conn.link("node-a"), conn.link("node-b")))  # lazy
    finally:
        await conn.close()


async def test_included_files_and_pattern_hosts_are_nodes(sshd: Sshd, node: Node, tmp_path: Path) -> None:
    (tmp_path / "nodes.d").mkdir()
    sshd.client_config(tmp_path / "nodes.d" / "lab.conf", {"included": {}})
    common = (f"    HostName 127.0.0.1\n    Port {sshd.port}\n    User {sshd.user}\n"
              f"    IdentityFile {sshd.client_key}\n")
    (tmp_path / "config").write_text(f"Include {tmp_path}/nodes.d/*.conf\n\nHost *.lab\n{common}")
    conn = connect(sshd, tmp_path / "config", node)
    assert [n.alias for n in conn.table()] == ["included"]
    await conn.close()
    conn = connect(sshd, tmp_path / "config", node, hosts=["gpu1.lab", "included"])
    try:
        assert [(n.alias, n.host, n.port) for n in conn.table()] == [
            ("gpu1.lab", "127.0.0.1", sshd.port), ("included", "127.0.0.1", sshd.port)]
        assert all(h.ok for h in (await conn.node_health()).values())
    finally:
        await conn.close()
    (tmp_path / "broken").write_text('Host "unterminated\n')
    with pytest.raises(HomeskilletError, match="broken:1: No closing quotation"):
        connect(sshd, tmp_path / "broken", node)


# -- serving through the tunnel -----------------------------------------------------------------


async def test_chat_generate_and_stream_through_ssh(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    conn = connect(sshd, ssh_config, node, hosts=["node-a"])
    direct = OllamaConnector(base_url=node.url)
    try:
        res = await conn.infer(req("Hello over SSH"))
        assert res.text == (await direct.infer(req("Hello over SSH"))).text
        hello = render_chat([("user", "Hello over SSH")])  # the node renders a prompt as a one-message chat
        assert res.text == get_model().generate(hello, max_tokens=12).text
        assert res.prompt_tokens == get_model().count_tokens(hello) and res.completion_tokens == 12
        context = [Message(role="system", content="answer tersely")]
        chat = await conn.infer(req("and chat?", context=context))
        prompt = render_chat([("system", "answer tersely"), ("user", "and chat?")])
        assert node.gen.prompts[-1] == prompt and chat.text == get_model().generate(prompt, max_tokens=12).text
        pieces = [p async for p in conn.stream(req("Hello over SSH"))]
        assert len(pieces) == 12 and "".join(pieces) == res.text
        assert conn.link("node-a").connects == 1  # one SSH connection carried every request
    finally:
        await conn.close()
        await direct.close()
    assert "ctype session" not in sshd.log_text()


async def test_health_and_quote_show_warm_models_per_node(sshd: Sshd, ssh_config: Path) -> None:
    gen = Recording()
    with serve_asgi(create_node_app(gen, models=[MODEL, "other:7b"]), "/api/version") as url:
        conn = connect(sshd, ssh_config, Node(url, gen), region="lab")
        try:
            before = await conn.node_health()
            assert all(h.ok and h.warm_models == [] for h in before.values())
            await conn.infer(req("warm it"))
            health = await conn.health()
            assert health.ok and health.warm_models == ["smollm2-135m", "smollm2-135m:latest"] and health.active == 0
            assert "node-a: 2 models, 1 warm" in health.detail
            offers = await conn.quote(AllocationRequest(model="other:7b"))
            assert [o.offer_id for o in offers] == ["node-a", "node-b"]
            assert all(o.usd_per_hour == 0 and o.models == ["smollm2-135m:latest", "other:7b"] and o.region == "lab"
                       for o in offers)
            assert await conn.quote(AllocationRequest(model="absent")) == []
        finally:
            await conn.close()


async def test_each_node_has_its_own_port_and_strikes_follow_the_model(sshd: Sshd, ssh_config: Path,
                                                                       node: Node) -> None:
    other = Recording()
    with serve_asgi(create_node_app(other, models=["other:7b"]), "/api/version") as url:
        conn = connect(sshd, ssh_config, node, nodes={"node-b": {"remote_port": Node(url, other).port}})
        try:
            seen = len(node.gen.prompts)
            await conn.infer(req("for b", model="other:7b"))
            await conn.infer(req("for a"))
            assert other.prompts == [render_chat([("user", "for b")])]
            assert node.gen.prompts[seen:] == [render_chat([("user", "for a")])]
            with pytest.raises(ProviderError, match="no node holds 'absent'") as err:
                await conn.infer(req("x", model="absent"))
            assert err.value.http_status == 404
        finally:
            await conn.close()


async def test_a_node_that_stops_answering_is_skipped(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    gen = Recording()
    with serve_asgi(create_node_app(gen, models=[MODEL]), "/api/version") as url:
        conn = connect(sshd, ssh_config, node, nodes={"node-a": {"remote_port": Node(url, gen).port}})
        await conn.nodes["node-a"].ollama.infer(req("warm"))  # warm, with a fast latency record
        await conn.health()  # both nodes hold the model; node-a sorts first
    try:  # node-a's Ollama is gone now: the channel open is refused on the node, node-b serves
        seen = len(node.gen.prompts)
        res = await conn.infer(req("still served"))
        assert res.text and node.gen.prompts[seen:] == [render_chat([("user", "still served")])]
        assert gen.prompts == [render_chat([("user", "warm")])]
        health = (await conn.node_health())["node-a"]
        assert not health.ok and "cannot reach 127.0.0.1" in health.detail
    finally:
        await conn.close()


# -- connection loss, reconnect, keepalive ------------------------------------------------------


async def test_reconnects_after_the_server_kills_the_connection(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    conn = connect(sshd, ssh_config, node, hosts=["node-a"])
    link = conn.link("node-a")
    try:
        await conn.infer(req("before"))
        assert link.connected and link.connects == 1
        assert sshd.signal_sessions(signal.SIGTERM)
        await asyncio.wait_for(link.lost.wait(), 10)
        assert not link.connected and link.losses == 1
        res = await conn.infer(req("after"))
        assert res.text == get_model().generate(render_chat([("user", "after")]), max_tokens=12).text
        assert link.connects == 2
    finally:
        await conn.close()


async def test_reconnects_after_we_close_the_transport(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    conn = connect(sshd, ssh_config, node, hosts=["node-a"])
    link = conn.link("node-a")
    try:
        await conn.infer(req("one"))
        await link.drop()
        assert not link.connected
        await conn.infer(req("two"))
        assert link.connects == 2 and link.losses == 0  # we closed it: not counted as a loss
    finally:
        await conn.close()


async def test_keepalive_detects_a_silent_server(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    conn = connect(sshd, ssh_config, node, hosts=["node-a"], keepalive_s=0.2, keepalive_count=2)
    link = conn.link("node-a")
    stopped: list[int] = []
    try:
        await conn.infer(req("alive"))
        stopped = sshd.signal_sessions(signal.SIGSTOP)  # the TCP stays open; nobody answers on it
        assert stopped
        await asyncio.wait_for(link.lost.wait(), 10)
        assert "not responding to keepalive" in link.last_loss
        res = await conn.infer(req("again"))  # a fresh connection, served by a new sshd child
        assert res.completion_tokens == 12 and link.connects == 2
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await conn.close()


class Gated(Recording):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]:
        for piece in super().stream(prompt, max_tokens, temperature):
            if not self.gate.acquire(timeout=30):
                return
            yield piece


async def test_a_request_in_flight_when_the_connection_dies_fails_retryably(sshd: Sshd, ssh_config: Path) -> None:
    gen = Gated()
    with serve_asgi(create_node_app(gen, models=[MODEL]), "/api/version") as url:
        conn = connect(sshd, ssh_config, Node(url, gen), hosts=["node-a"])
        try:
            stream = conn.stream(req("cut me off"))
            gen.gate.release()
            assert await asyncio.wait_for(anext(stream), 30)
            sshd.signal_sessions(signal.SIGTERM)
            with pytest.raises(ProviderError) as err:
                await asyncio.wait_for(anext(stream), 30)
            assert err.value.retryable and "node-a" in str(err.value)
            gen.gate.release(100)
            assert (await conn.infer(req("next"))).completion_tokens == 12  # reconnected
        finally:
            gen.gate.release(100)
            await conn.close()


async def test_https_through_the_tunnel_is_refused_clearly(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    conn = connect(sshd, ssh_config, node, hosts=["node-a"])
    tls = OllamaConnector(base_url=f"https://127.0.0.1:{node.port}", name="tls",
                          transport=TunnelTransport(conn.link("node-a").open_channel))
    try:
        with pytest.raises(ProviderError, match="SSH already encrypts"):
            await tls.infer(req("x"))
    finally:
        await tls.close()
        await conn.close()


# -- nothing reaches a shell ---------------------------------------------------------------------


async def test_shell_metacharacters_reach_the_model_verbatim_and_run_nothing(
        sshd: Sshd, ssh_config: Path, node: Node) -> None:
    canary = Path("/tmp") / f"hs-canary-{uuid.uuid4().hex[:8]}"  # short: the prompt must fit the context
    c = str(canary)
    payload = (f"$(touch {c}) `touch {c}`; touch {c} | cat && touch {c}\n"
               f"'$(id)' \"`id`\" || true > {c} & {{{{ .Prompt }}}} ${{IFS}} $HOME \\n %s \u00fcn\u00ef")
    assert len(payload.encode()) < 240  # the whole prompt fits the model's context
    conn = connect(sshd, ssh_config, node, hosts=["node-a"])
    direct = OllamaConnector(base_url=node.url)
    try:
        via_ssh = await conn.nodes["node-a"].ollama.generate(MODEL, payload, options=GREEDY)
        assert node.gen.prompts[-1] == render_chat([("user", payload)])  # what the model saw, byte for byte
        plain = await direct.generate(MODEL, payload, options=GREEDY)
        assert (via_ssh.text, via_ssh.prompt_eval_count) == (plain.text, plain.prompt_eval_count)
        assert via_ssh.prompt_eval_count == get_model().count_tokens(render_chat([("user", payload)]))
        chat = await conn.infer(req(payload, context=[Message(role="system", content=payload)]))
        assert node.gen.prompts[-1] == render_chat([("system", payload), ("user", payload)])
        assert 0 < chat.completion_tokens <= 12
    finally:
        await conn.close()
        await direct.close()
    ran = canary.exists()
    canary.unlink(missing_ok=True)
    assert not ran, "a shell ran the payload"
    log = sshd.log_text()
    assert "ctype direct-tcpip" in log and "ctype session" not in log  # no exec, no shell, no subsystem


# -- trust and secrets --------------------------------------------------------------------------


async def test_an_unknown_host_key_is_refused(sshd: Sshd, ssh_config: Path, node: Node, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {impostor[0]} {impostor[1]}\n")
    conn = connect(sshd, ssh_config, node, hosts=["node-a"], known_hosts=str(tmp_path / "known_hosts"))
    try:
        with pytest.raises(ProviderAuthError, match="host key not trusted") as err:
            await conn.infer(req("x"))
        assert not err.value.retryable and str(tmp_path / "known_hosts") in str(err.value)
        assert not (await conn.health()).ok
    finally:
        await conn.close()


def test_host_key_checking_cannot_be_switched_off(sshd: Sshd, node: Node, tmp_path: Path) -> None:
    config = sshd.client_config(tmp_path / "cfg", {"loose": {"UserKnownHostsFile": "none",
                                                             "StrictHostKeyChecking": "no"}})
    with pytest.raises(HomeskilletError, match="disables host key checking"):
        SshConnector(ssh_config=str(config), remote_port=node.port)
    config = sshd.client_config(tmp_path / "cfg2", {"nofile": {"UserKnownHostsFile": str(tmp_path / "absent")}})
    with pytest.raises(HomeskilletError, match="no known_hosts file to verify nofile"):
        SshConnector(ssh_config=str(config), remote_port=node.port)


async def test_a_key_the_server_does_not_know_is_refused(sshd: Sshd, ssh_config: Path, node: Node,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    conn = connect(sshd, ssh_config, node, hosts=["node-a"], client_key_file=str(tmp_path / "stranger"))
    try:
        with pytest.raises(ProviderAuthError, match="refused our key") as err:
            await conn.infer(req("x"))
        assert not err.value.retryable
    finally:
        await conn.close()


async def test_an_encrypted_key_from_the_environment(sshd: Sshd, ssh_config: Path, node: Node, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    secret = "correct horse battery staple 9f2c"
    key = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", secret, "-f", str(key)], check=True)
    with (sshd.dir / "authorized_keys").open("a") as f:
        f.write(key.with_suffix(".pub").read_text())
    monkeypatch.setenv("HS_TEST_SSH_KEY", key.read_text())
    monkeypatch.setenv("HS_TEST_SSH_PASS", secret)
    conn = connect(sshd, ssh_config, node, hosts=["node-a"], client_key_env="HS_TEST_SSH_KEY",
                   passphrase_env="HS_TEST_SSH_PASS")
    try:
        assert (await conn.infer(req("with a key from the env"))).completion_tokens == 12
    finally:
        await conn.close()
    monkeypatch.setenv("HS_TEST_SSH_PASS", "wrong " + secret)
    with pytest.raises(HomeskilletError, match="cannot use the client key") as err:
        connect(sshd, ssh_config, node, client_key_env="HS_TEST_SSH_KEY", passphrase_env="HS_TEST_SSH_PASS")
    out = capfd.readouterr()
    for text in (str(err.value), repr(err.value.args), out.out, out.err):
        assert secret not in text and "PRIVATE KEY" not in text


def test_bad_options_are_named(sshd: Sshd, ssh_config: Path, node: Node, tmp_path: Path) -> None:
    with pytest.raises(HomeskilletError, match="unknown option paralel"):
        connect(sshd, ssh_config, node, paralel=2)
    with pytest.raises(HomeskilletError, match="no Host entry for node-z; its hosts are: node-a, node-b"):
        connect(sshd, ssh_config, node, hosts=["node-z"])
    with pytest.raises(HomeskilletError, match=r"nodes\.node-b is not one of hosts"):
        connect(sshd, ssh_config, node, hosts=["node-a"], nodes={"node-b": {"remote_port": 1}})
    with pytest.raises(HomeskilletError, match=r"unknown option nodes\.node-a\.port"):
        connect(sshd, ssh_config, node, nodes={"node-a": {"port": 1}})
    with pytest.raises(HomeskilletError, match="cannot read the ssh_config file"):
        connect(sshd, tmp_path / "absent", node)
    (tmp_path / "wild").write_text("Host *\n  User x\n")
    with pytest.raises(HomeskilletError, match="names no concrete Host"):
        connect(sshd, tmp_path / "wild", node)


def test_without_the_extra_the_error_names_it(ssh_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncssh", None)  # as if not installed
    with pytest.raises(ExtraMissing, match=r"pip install 'homeskillet\[ssh\]'"):
        require_asyncssh()
    with pytest.raises(ExtraMissing, match="Ollama nodes over SSH"):  # the runtime disables the pool with this
        SshConnector(ssh_config=str(ssh_config))


# -- as a pool of the whole system --------------------------------------------------------------


def test_example_pools_decode_and_build(sshd: Sshd, ssh_config: Path, node: Node) -> None:
    settings = load_settings(EXAMPLE)
    providers = {p.provider for p in settings.pools}
    assert providers == {"ssh", "ollama"}
    for spec in settings.pools:
        if spec.provider == "ssh":  # the example's own options, pointed at the test server
            opts = spec.options | {"ssh_config": str(ssh_config), "known_hosts": str(sshd.known_hosts),
                                   "hosts": ["node-a"], "nodes": {}}
            SshConnector(**opts)
        else:
            OllamaConnector(**spec.options)


async def test_a_query_is_served_by_an_ssh_pool(sshd: Sshd, ssh_config: Path, node: Node, nats_url: str) -> None:
    pool = PoolSpec(name="ssh/lab", provider="ssh", pool_class="local", models=[MODEL], accelerator="cpu",
                    capacity=1, options={"ssh_config": str(ssh_config), "known_hosts": str(sshd.known_hosts),
                                         "hosts": ["node-a"], "remote_port": node.port})
    async with start_runtime(nats_url, pools=[pool]) as rt:
        answer = await rt.ask(prompt="Who serves this?", covenant=MODEL)
    [fragment] = answer.fragments
    assert fragment.pool == "ssh/lab" and node.gen.prompts[-1] == render_chat([("user", "Who serves this?")])
    assert answer.text.strip()
