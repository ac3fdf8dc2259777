"""``homeskillet up --http --auth`` and ``homeskillet token`` as a user runs them: a real process,
its printed address, a token from the CLI, the openai SDK."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

SECRET = "cli-test-secret-0123456789abcdef!!"


def test_up_with_http_and_auth_serves_tokens_from_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "hs.toml"
    config.write_text('[[pools]]\nname = "echo/standard"\nprovider = "echo"\npool_class = "standard"\n'
                      'vram_mb = 81920\ntflops = 990.0\n[auth]\naudience = "homeskillet"\n')
    env = {**os.environ, "JWT_SECRET": SECRET, "HOMESKILLET_LOG_LEVEL": "WARNING"}
    env.pop("JWT_ENABLED", None)
    cli = [sys.executable, "-m", "homeskillet.cli"]
    proc = subprocess.Popen([*cli, "up", "--config", str(config), "--port", "-1", "--data-dir", str(tmp_path / "js"),
                             "--http", "127.0.0.1:0", "--auth"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line, deadline = "", time.monotonic() + 60
        while "HTTP on" not in line:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready and proc.poll() is None, "homeskillet up did not print its HTTP address"
            line = proc.stdout.readline()
        m = re.search(r"HTTP on (http://\S+) \(auth on\)", line)
        assert m, line
        url = m.group(1)
        token = subprocess.run([*cli, "token", "--config", str(config), "--tenant", "acme", "--ttl", "120"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        msgs = [{"role": "user", "content": "hello from the cli"}]
        with openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0) as c:
            done = c.chat.completions.create(model="gemma-2b", messages=msgs)  # type: ignore[arg-type]
            assert done.choices[0].message.content == "echo: hello from the cli"
            assert done.model_extra["homeskillet"]["tenant"] == "acme"  # type: ignore[index]
        with openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) as c:
            try:
                c.chat.completions.create(model="gemma-2b", messages=msgs)  # type: ignore[arg-type]
                raise AssertionError("an invalid token was accepted")
            except openai.AuthenticationError:
                pass
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
