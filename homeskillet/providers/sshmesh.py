"""The SSH side of ``ssh/*`` pools: the node table, read from an OpenSSH config file, and one
SSH connection per node (``SshLink``) with keepalive, reconnected on loss.

asyncssh resolves each ``Host`` entry (HostName, Port, User, IdentityFile, ProxyJump, Include …)
exactly as it will when connecting; we only list the nodes: the concrete aliases on the ``Host``
lines of the file and the files it includes, or the ``hosts`` given (which may also be names a
``Host`` pattern matches, such as ``gpu1.lab`` for ``Host *.lab``).
Host keys are always verified: against the ``known_hosts`` option, else the entry's
``UserKnownHostsFile``, else ``~/.ssh/known_hosts``. ``UserKnownHostsFile none`` (accept any
key) is refused, not obeyed. asyncssh is the ``ssh`` extra, imported on first use.
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import re
import shlex
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ExtraMissing, HomeskilletError, ProviderAuthError, ProviderError
from ..secrets import Secret
from ..telemetry import get_logger

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection, SSHClientConnectionOptions, SSHReader, SSHWriter

__all__ = ["SshLink", "SshNode", "host_aliases", "read_nodes", "require_asyncssh"]

log = get_logger("homeskillet.providers.ssh")
DEFAULT_KEEPALIVE_S = 15.0
DEFAULT_KEEPALIVE_COUNT = 3


def require_asyncssh() -> ModuleType:
    try:
        import asyncssh
    except ImportError:
        raise ExtraMissing("Ollama nodes over SSH", "ssh") from None
    return asyncssh


class SshNode(msgspec.Struct, kw_only=True):
    """One row of the node table: an alias and what the config file resolves it to."""

    alias: str
    host: str
    port: int
    user: str
    known_hosts: list[str]  # files the host key is checked against
    identity_files: list[str] = []
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    keepalive_count: int = DEFAULT_KEEPALIVE_COUNT

    def __str__(self) -> str:
        return f"{self.alias} ({self.user}@{self.host}:{self.port})"


_KEY = re.compile(r"^\s*(\w+)\s*=?\s*")


def _host_lines(text: str, source: str) -> Iterator[tuple[str, list[str]]]:
    """``(keyword, args)`` of each Host and Include line, lower-cased keyword, quotes honoured."""
    for number, line in enumerate(text.splitlines(), 1):
        key, _, rest = _KEY.sub(r"\1 ", line).partition(" ")
        if key.lower() in ("host", "include"):
            try:
                yield key.lower(), shlex.split(rest, comments=True)
            except ValueError as exc:
                raise HomeskilletError(f"ssh: {source}:{number}: {exc}") from None


def host_aliases(config_text: str, source: str = "ssh_config") -> list[str]:
    """Concrete names on ``Host`` lines, in order; patterns (``*``, ``?``, ``!``) name no node."""
    names: list[str] = []
    for key, args in _host_lines(config_text, source):
        names += [n for n in args if key == "host" and not any(c in n for c in "*?!") and n not in names]
    return names


def _host_entries(path: Path, depth: int = 0) -> tuple[list[str], list[str]]:
    """Concrete names and patterns of the Host lines of ``path`` and the files it Includes."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise HomeskilletError(f"ssh: cannot read the ssh_config file {path}: {exc.strerror}") from None
    names, patterns = host_aliases(text, str(path)), []
    for key, args in _host_lines(text, str(path)):
        if key == "host":
            patterns += [a for a in args if any(c in a for c in "*?") and not a.startswith("!")]
        elif depth < 16:  # Include: a relative path is under ~/.ssh, as for OpenSSH and asyncssh
            for arg in args:
                where = Path(arg).expanduser()
                for found in sorted(glob.glob(str(where if where.is_absolute() else Path.home() / ".ssh" / where))):
                    more, more_patterns = _host_entries(Path(found), depth + 1)
                    names += [n for n in more if n not in names]
                    patterns += more_patterns
    return names, patterns


def read_nodes(ssh_config: str | Path, hosts: list[str] | None = None, *, known_hosts: str | None = None,
               keepalive_s: float | None = None, keepalive_count: int | None = None, connect_timeout_s: float = 10.0,
               client_key: Secret | None = None, passphrase: Secret | None = None,
               ) -> list[tuple[SshNode, SSHClientConnectionOptions]]:
    """The node table and each node's asyncssh options; every problem raises before any I/O."""
    asyncssh = require_asyncssh()
    path = Path(ssh_config).expanduser()
    aliases, patterns = _host_entries(path)
    unknown = [h for h in hosts or () if h not in aliases and not any(fnmatch.fnmatchcase(h, p) for p in patterns)]
    if unknown:
        raise HomeskilletError(f"ssh: {path} has no Host entry for {', '.join(unknown)}; "
                               f"its hosts are: {', '.join(aliases) or '(none)'}")
    chosen = hosts if hosts is not None else aliases
    if not chosen:
        raise HomeskilletError(f"ssh: {path} names no concrete Host; add a 'Host <alias>' entry per node")
    keys: Any = ()
    if client_key is not None:
        try:
            keys = [asyncssh.import_private_key(client_key.reveal(), passphrase.reveal() if passphrase else None)]
        except (asyncssh.KeyImportError, ValueError) as exc:  # the reason names no key material
            raise HomeskilletError(f"ssh: cannot use the client key: {exc}; check the key and its passphrase") from None
    rows = []
    for alias in chosen:
        try:
            base = asyncssh.SSHClientConnectionOptions(config=[str(path)], host=alias)
        except (OSError, ValueError, asyncssh.Error) as exc:
            raise HomeskilletError(f"ssh: {path}, Host {alias}: {exc}") from None
        files = _known_hosts(alias, path, known_hosts, base.known_hosts)
        interval = keepalive_s if keepalive_s is not None else (base.keepalive_interval or DEFAULT_KEEPALIVE_S)
        count = keepalive_count if keepalive_count is not None else base.keepalive_count_max
        try:
            opts = asyncssh.SSHClientConnectionOptions(
                base, known_hosts=files, keepalive_interval=interval, keepalive_count_max=count,
                connect_timeout=connect_timeout_s, client_keys=keys,
                passphrase=passphrase.reveal() if passphrase else None)
        except (OSError, ValueError, asyncssh.Error) as exc:
            raise HomeskilletError(f"ssh: {path}, Host {alias}: {exc}") from None
        identity = list(dict.fromkeys(str(f) for f in base.config.get("IdentityFile", ()) or ()))
        rows.append((SshNode(alias=alias, host=opts.host, port=opts.port, user=opts.username, known_hosts=files,
                             identity_files=identity, keepalive_s=interval, keepalive_count=count), opts))
    return rows


def _known_hosts(alias: str, config: Path, option: str | None, resolved: Any) -> list[str]:
    if option:
        files = [option]
    elif resolved is None:  # asyncssh's reading of "UserKnownHostsFile none": trust any key
        raise HomeskilletError(f"ssh: {config}, Host {alias} disables host key checking (UserKnownHostsFile none); "
                               "Homeskillet always verifies: set the pool option known_hosts to a file with the "
                               "node's key")
    else:
        files = [str(f) for f in resolved] or ["~/.ssh/known_hosts"]
    files = [str(Path(f).expanduser()) for f in files]
    if not any(Path(f).is_file() for f in files):
        raise HomeskilletError(f"ssh: no known_hosts file to verify {alias}'s host key (looked at "
                               f"{', '.join(files)}); add the node's key there (ssh-keyscan, then compare the "
                               "fingerprint with the node's) or set the pool option known_hosts")
    return files


@cache
def _watcher_class() -> type:
    """An ``SSHClient`` that reports the connection's end (asyncssh imported on first use)."""
    asyncssh = require_asyncssh()

    class Watcher(asyncssh.SSHClient):  # type: ignore[misc, name-defined]
        def __init__(self, on_lost: Callable[[Exception | None], None]) -> None:
            self._on_lost = on_lost

        def connection_lost(self, exc: Exception | None) -> None:
            self._on_lost(exc)

    return Watcher


class SshLink:
    """One SSH connection to one node: made on first use, kept alive by SSH keepalives, made
    again on the next use after it is lost. Concurrent first uses share one connect."""

    def __init__(self, node: SshNode, options: SSHClientConnectionOptions) -> None:
        self.node, self._options = node, options
        self._conn: SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # connections made over this link's life (1 + reconnects)
        self.losses = 0  # connections lost without our asking
        self.last_loss = ""
        self.lost = asyncio.Event()  # set at a loss, cleared at the next connect

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connection(self) -> SSHClientConnection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> SSHClientConnection:
        asyncssh = require_asyncssh()
        holder: list[SSHClientConnection] = []
        watcher = _watcher_class()
        try:
            conn: SSHClientConnection = await asyncssh.connect(self.node.alias, options=self._options,
                                          client_factory=lambda: watcher(lambda exc: self._ended(holder, exc)))
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ProviderAuthError(f"ssh node {self.node}: host key not trusted ({exc.reason}); it is checked "
                                    f"against {', '.join(self.node.known_hosts)}: verify the node's fingerprint and "
                                    "add its key there", provider="ssh") from None
        except asyncssh.PermissionDenied as exc:
            raise ProviderAuthError(f"ssh node {self.node}: the server refused our key ({exc.reason}); check the "
                                    "IdentityFile or client key and the node's authorized_keys",
                                    provider="ssh") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
            raise ProviderError(f"ssh node {self.node}: cannot connect: {reason}", provider="ssh") from None
        holder.append(conn)
        self.lost.clear()
        self.connects += 1
        log.info("ssh_connected", node=self.node.alias, host=self.node.host, port=self.node.port,
                 reconnect=self.connects > 1)
        return conn

    def _ended(self, holder: list[SSHClientConnection], exc: Exception | None) -> None:
        conn = holder[0] if holder else None
        if conn is None or conn is not self._conn:
            return  # a failed connect, or a connection we already let go of
        self._conn = None
        self.losses += 1
        self.last_loss = str(exc) if exc else "closed by the server"
        log.warning("ssh_connection_lost", node=self.node.alias, reason=self.last_loss)
        self.lost.set()

    async def open_channel(self, host: str, port: int) -> tuple[SSHReader[bytes], SSHWriter[bytes]]:
        """A direct-tcpip channel to ``host:port`` as the node sees it (no shell, no command)."""
        asyncssh = require_asyncssh()
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                return await conn.open_connection(host, port)
            except asyncssh.ChannelOpenError as exc:
                raise ProviderError(f"ssh node {self.node}: cannot reach {host}:{port} there ({exc.reason}); is "
                                    "Ollama listening on it, and does sshd allow TCP forwarding?",
                                    provider="ssh") from None
            except (OSError, asyncssh.Error) as exc:  # lost between the check and the open
                if self._conn is conn:
                    self._conn = None
                if attempt == 2:
                    raise ProviderError(f"ssh node {self.node}: connection lost: {exc}", provider="ssh") from None
        raise AssertionError("unreachable")

    async def drop(self) -> None:
        """Close the connection from our side; the next use connects again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    close = drop
