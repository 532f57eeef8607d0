"""What the test tools devstack provides (kcat, Toxiproxy) share: the order a binary is
looked for in, one installer at a time, and the loopback rule every one of them obeys.

``provide`` looks in this order and returns the first binary that runs:

1. the environment variable ``env_var`` (a path, or a name on ``PATH``), which must run;
2. ``on_path``, a name on ``PATH``, when the tool may come from the system;
3. the copy cached by an earlier call;
4. else ``install()``, under an exclusive lock on ``lock`` so that two processes calling
   this at once take turns (the second finds the first one's copy).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path


def provide(
    *,
    what: str,
    env_var: str,
    cached: Path,
    lock: Path,
    problem_running: Callable[[Path], str | None],
    install: Callable[[], Path],
    error: Callable[[str], Exception],
    on_path: str | None = None,
) -> Path:
    """A binary of ``what`` that runs; ``problem_running(path)`` is None for one."""
    given = os.environ.get(env_var)
    if given:
        path = Path(shutil.which(given) or given)
        problem = problem_running(path)
        if problem is not None:
            raise error(f"{env_var}={given} is not a {what} that runs: {problem}")
        return path
    if on_path is not None and (found := shutil.which(on_path)) is not None:
        return Path(found)
    if problem_running(cached) is None:
        return cached
    lock.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock):
        # Another process may have installed it while this one waited for the lock.
        if problem_running(cached) is None:
            return cached
        return install()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (blocking): one installer at a time."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_problem(path: Path, *args: str) -> tuple[str | None, str]:
    """Run ``path args`` (a version flag, say): None and its output when it ran and
    exited 0, else what is wrong and the output so far."""
    command = f"{path} {' '.join(args)}"
    if not path.is_file():
        return f"{path} does not exist", ""
    if not os.access(path, os.X_OK):
        return f"{path} is not executable", ""
    try:
        result = subprocess.run(
            [str(path), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command}: {exc}", ""
    output = result.stdout + result.stderr
    if result.returncode != 0:
        return f"{command} exited with {result.returncode}: {tail(output)}", output
    return None, output


def tail(output: str, lines: int = 15) -> str:
    """The last lines of a command's output, for an error message."""
    return "\n".join(output.strip().splitlines()[-lines:])


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` names this machine: the test tools never talk to, or listen
    for, anything else."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
