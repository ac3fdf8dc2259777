"""Our own NATS connection with credentials: a real nats-server that demands user/password or a
token, and a Runtime that connects with them (from a file) and serves a query."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from homeskillet.config import NatsAuth, Settings
from homeskillet.errors import HomeskilletError
from homeskillet.natsd import NatsServer
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool


class GuardedNats(NatsServer):
    def __init__(self, authorization: str) -> None:
        super().__init__(name="hs-guarded", jetstream=True)
        self.authorization = authorization

    def _config(self) -> str:
        return super()._config() + f"authorization {{ {self.authorization} }}\n"


@pytest.fixture(params=["user", "token"])
def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, NatsAuth]]:
    secret = tmp_path / "nats-secret"
    secret.write_text("s3cret-0123456789\n")
    if request.param == "user":
        server = GuardedNats('user: "hs", password: "s3cret-0123456789"')
        auth = NatsAuth(user="hs", password_file=str(secret))
    else:
        server = GuardedNats('token: "s3cret-0123456789"')
        auth = NatsAuth(token_file=str(secret))
    server.start()
    try:
        yield server.url, auth
    finally:
        server.stop()


async def test_runtime_connects_with_credentials(guarded: tuple[str, NatsAuth]) -> None:
    url, auth = guarded
    async with Runtime(Settings(nats=[url], pools=[echo_pool()], nats_auth=auth)) as rt:
        answer = await rt.ask(prompt="behind a password", model="gemma-2b")
    assert answer.text == "echo: behind a password"
    assert "s3cret" not in repr(auth)


def test_credential_mistakes_are_clear(tmp_path: Path) -> None:
    with pytest.raises(HomeskilletError, match="has no password"):
        NatsAuth(user="hs").connect_options()
    with pytest.raises(HomeskilletError, match="does not exist"):
        NatsAuth(nkey_seed_file=str(tmp_path / "missing.nk")).connect_options()
    seed = tmp_path / "user.nk"
    seed.write_text("SUA...")
    assert NatsAuth(nkey_seed_file=str(seed)).connect_options() == {"nkeys_seed": str(seed)}
    with pytest.raises(HomeskilletError, match="use one of"):
        NatsAuth(token="t", nkey_seed_file=str(seed)).connect_options()
