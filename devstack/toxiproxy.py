"""Toxiproxy, Shopify's TCP proxy for simulating network conditions, for the fault suite.

``server_path`` returns a ``toxiproxy-server`` binary of version ``VERSION`` that runs,
looked up in this order:

1. ``TOXIPROXY_SERVER`` in the environment (a path, or a name on ``PATH``).
2. The copy cached under ``<home>/toxiproxy/bin`` by an earlier call.
3. Else it is built from source with ``go install MODULE@vVERSION`` (``go_build``),
   and kept once the binary answers ``-version``.

Two processes that call this at once take turns on ``<home>/toxiproxy.lock``.

``ToxiproxyServer`` runs one on a free loopback port, and ``ToxiproxyClient`` drives its
REST API: proxies (created, enabled and disabled, which is how a link is cut) and toxics
(``latency``, ``bandwidth``, ``timeout``...). Proxies listen on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from devstack import go_build, processes, tools

VERSION = "2.5.0"
MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
ENV_VAR = "TOXIPROXY_SERVER"
HOST = "127.0.0.1"
#: What ``go install`` names the binary (after the package's folder).
BINARY = "server"
#: As the project's release build links it: stripped, and knowing its own version.
LDFLAGS = f"-s -w -X github.com/Shopify/toxiproxy/v2.Version={VERSION}"

Stream = Literal["upstream", "downstream"]
#: Both directions of a link: client to server (upstream) and back (downstream).
BOTH: tuple[Stream, ...] = ("upstream", "downstream")


class ToxiproxySetupError(RuntimeError):
    """No working toxiproxy-server could be found, built or started; the message says why."""


# -- finding or building the binary -----------------------------------------------------


def server_path(home: Path) -> Path:
    """A toxiproxy-server of ``VERSION`` that runs; ``home`` is the devstack folder."""
    return tools.provide(
        what="toxiproxy",
        env_var=ENV_VAR,
        cached=cached_path(home),
        lock=home / "toxiproxy.lock",
        problem_running=_problem_running,
        install=lambda: _build(home),
        error=ToxiproxySetupError,
    )


def cached_path(home: Path) -> Path:
    return home / "toxiproxy" / "bin" / BINARY


def _build(home: Path) -> Path:
    return go_build.go_install(
        what="toxiproxy-server",
        module=MODULE,
        version=f"v{VERSION}",
        ldflags=LDFLAGS,
        final=home / "toxiproxy",
        binary=BINARY,
        problem_running=_problem_running,
        error=ToxiproxySetupError,
    )


def _problem_running(path: Path) -> str | None:
    """None when ``path`` is a toxiproxy-server of ``VERSION``; else what is wrong."""
    problem, output = tools.run_problem(path, "-version")
    if problem is None and re.search(rf"\b{re.escape(VERSION)}\b", output) is None:
        return f"{path} is not version {VERSION}: {tools.tail(output)}"
    return problem


# -- running it -------------------------------------------------------------------------


@dataclass
class ToxiproxyServer:
    """One toxiproxy-server process whose files (log, pid) live under ``home``."""

    home: Path
    binary: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @property
    def url(self) -> str:
        if self.port is None:
            raise ToxiproxySetupError("toxiproxy-server is not started")
        return f"http://{HOST}:{self.port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start on a free loopback port and wait until the API answers. A server left
        behind by an earlier process that died is stopped first: proxies are per run."""
        if self.running():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        for attempt in range(3):
            # The port may be taken between choosing and binding it: then choose again.
            self.port = processes.free_port(HOST)
            with self.log_path.open("wb") as log:  # one log per start: counts are per run
                self.process = subprocess.Popen(
                    [str(self.binary), "-host", HOST, "-port", str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid_file.write_text(str(self.process.pid))
            try:
                processes.wait_until(
                    self._answers, timeout=timeout, interval=0.1, what=f"toxiproxy at {self.url}"
                )
                return
            except _ExitedError:
                if attempt == 2:
                    raise ToxiproxySetupError(
                        f"toxiproxy-server exited during start-up; see {self.log_path}:\n"
                        + tools.tail(self.log_path.read_text(errors="replace"))
                    ) from None

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.port is not None
        if self.process.poll() is not None:
            raise _ExitedError
        return processes.port_open(HOST, self.port)

    def stop(self) -> None:
        if self.process is not None:
            processes.terminate(self.process.pid, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)  # reap it
            self.process = None
        self.pid_file.unlink(missing_ok=True)

    def _stop_stale(self) -> None:
        pid = processes.read_pid(self.pid_file)
        if pid is None or not processes.pid_alive(pid):
            return
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return
        if os.fsdecode(command) == str(self.binary):
            processes.terminate(pid, timeout=10)


class _ExitedError(Exception):
    pass


# -- its REST API -------------------------------------------------------------------------


class ToxiproxyError(RuntimeError):
    """The API refused a request; the message has its status and answer."""


@dataclass(frozen=True)
class Toxic:
    """A toxic on one direction of a proxy's connections, as the API takes and returns
    it: ``upstream`` is client to server, ``downstream`` server to client."""

    type: str
    attributes: Mapping[str, int]
    stream: Stream = "downstream"
    name: str = ""
    toxicity: float = 1.0

    def __post_init__(self) -> None:
        if self.stream not in BOTH:
            raise ValueError(f"a toxic's stream is upstream or downstream, not {self.stream!r}")
        if not 0.0 <= self.toxicity <= 1.0:
            raise ValueError(f"toxicity is a probability in [0, 1], not {self.toxicity}")
        for key, value in self.attributes.items():
            if value < 0:
                raise ValueError(f"the {self.type} toxic's {key} cannot be negative ({value})")

    @property
    def key(self) -> str:
        """Its name in the API: given, else the type and the stream."""
        return self.name or f"{self.type}_{self.stream}"

    def body(self) -> dict[str, Any]:
        return {
            "name": self.key,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Toxic:
        return cls(
            type=data["type"],
            attributes=dict(data.get("attributes") or {}),
            stream=data["stream"],
            name=data["name"],
            toxicity=float(data.get("toxicity", 1.0)),
        )


def latency(milliseconds: int, *, jitter: int = 0, stream: Stream = "downstream") -> Toxic:
    """Delay every chunk of data by ``milliseconds`` (+/- ``jitter``)."""
    return Toxic("latency", {"latency": milliseconds, "jitter": jitter}, stream)


def bandwidth(kilobytes_per_second: int, *, stream: Stream = "downstream") -> Toxic:
    """Let at most ``kilobytes_per_second`` KB through per second, per connection."""
    if kilobytes_per_second == 0:
        raise ValueError("a bandwidth of 0 KB/s is a cut: disable the proxy instead")
    return Toxic("bandwidth", {"rate": kilobytes_per_second}, stream)


def timeout(milliseconds: int, *, stream: Stream = "downstream") -> Toxic:
    """Let no data through, and close each connection after ``milliseconds`` (0: keep it
    open, silently dropping what is sent, until the toxic is removed)."""
    return Toxic("timeout", {"timeout": milliseconds}, stream)


@dataclass(frozen=True)
class Proxy:
    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[Toxic, ...] = ()

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        """Where clients connect: ``host:port``."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Proxy:
        return cls(
            name=data["name"],
            listen=data["listen"],
            upstream=data["upstream"],
            enabled=bool(data["enabled"]),
            toxics=tuple(Toxic.from_api(toxic) for toxic in data.get("toxics") or ()),
        )


def require_loopback(address: str) -> None:
    """Network faults stay on this machine: a proxy listens on and forwards to loopback."""
    if not tools.is_loopback(address):
        raise ValueError(f"a proxy listens on and forwards to loopback only, not {address!r}")


class ToxiproxyClient:
    """A small asynchronous client of toxiproxy-server's REST API (aiohttp)."""

    def __init__(self, url: str, *, timeout_seconds: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ToxiproxyClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(method, self.url + path, json=body) as response:
            text = await response.text()
            if response.status >= 300:
                raise ToxiproxyError(f"{method} {path}: {response.status} {text.strip()}")
            if response.content_type == "application/json" and text:
                return await response.json(content_type=None)
            return text

    async def version(self) -> str:
        answer = await self._request("GET", "/version")
        return str(answer.get("version") if isinstance(answer, dict) else answer).strip()

    async def create_proxy(
        self, name: str, *, listen: str, upstream: str, enabled: bool = True
    ) -> Proxy:
        require_loopback(listen)
        require_loopback(upstream)
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return Proxy.from_api(await self._request("POST", "/proxies", body))

    async def proxy(self, name: str) -> Proxy:
        return Proxy.from_api(await self._request("GET", f"/proxies/{name}"))

    async def proxies(self) -> dict[str, Proxy]:
        answer: dict[str, Any] = await self._request("GET", "/proxies")
        return {name: Proxy.from_api(data) for name, data in answer.items()}

    async def delete_proxy(self, name: str) -> None:
        await self._request("DELETE", f"/proxies/{name}")

    async def set_enabled(self, name: str, enabled: bool) -> Proxy:
        """Disabling a proxy cuts the link: it closes every connection through it and
        stops listening, so new ones are refused. Enabling it listens again."""
        return Proxy.from_api(await self._request("POST", f"/proxies/{name}", {"enabled": enabled}))

    async def add_toxic(self, proxy: str, toxic: Toxic) -> Toxic:
        return Toxic.from_api(await self._request("POST", f"/proxies/{proxy}/toxics", toxic.body()))

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await self._request("DELETE", f"/proxies/{proxy}/toxics/{name}")

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._request("POST", "/reset")

    async def wait_ready(self, *, timeout_seconds: float = 30.0) -> str:
        """Poll ``/version`` until it answers; the version."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                return await self.version()
            except (aiohttp.ClientError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)
