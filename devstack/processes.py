"""Small process and port helpers shared by the native services."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state to tell.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state != "Z"
    return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float, what: str
) -> None:
    """Poll ``condition`` until it holds; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def terminate(pid: int, *, timeout: float = 30.0) -> None:
    """SIGTERM ``pid`` (and its process group), then SIGKILL if it does not exit in time."""
    if not pid_alive(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), timeout=timeout, interval=0.1, what=f"pid {pid}")
    except TimeoutError:
        _signal_group(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), timeout=10, interval=0.1, what=f"pid {pid}")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def terminate_now(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone: a crash, not a shutdown."""
    _signal_group(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout=10, interval=0.05, what=f"pid {pid} to die")


def pause(pid: int) -> None:
    _signal_group(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    _signal_group(pid, signal.SIGCONT)
