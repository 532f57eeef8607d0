"""kcat, Debian's Kafka command-line client (built on librdkafka), for tests that need
records our own client cannot produce.

``kcat_path`` returns a binary that runs, looked up in this order:

1. ``KCAT`` in the environment (a path, or a name on ``PATH``).
2. ``kcat`` on ``PATH``.
3. The copy cached under ``<home>/kcat`` by an earlier call.
4. Else it is installed, preferably without changing the system: ``apt-get download`` of
   kcat, unpacked with ``dpkg-deb -x`` into ``<home>/kcat/root``; then, for as long as
   ``ldd`` finds a library missing, the dependencies of what was unpacked that dpkg has
   not installed here (librdkafka1 and libyajl2 on a usual bookworm). A wrapper script,
   ``<home>/kcat/bin/kcat``, points ``LD_LIBRARY_PATH`` at the unpacked libraries, and
   ``kcat -V`` must run before the copy is kept. When that fails and we are root,
   ``apt-get install kcat`` is the fallback. ``apt-get update`` runs first (as root) when
   apt's package lists do not know kcat.

Two processes that call this at once take turns on ``<home>/kcat.lock``; the copy is
built in a temporary folder next to its final place and renamed there only once it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devstack import tools
from devstack.stack import home as default_home

PACKAGE = "kcat"
ENV_VAR = "KCAT"
_STAGING_PREFIX = ".kcat-"

#: apt and dpkg run non-interactively and in the C locale, whose output we parse.
_APT_ENV = {"LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
#: Wait for another apt or dpkg process's lock instead of failing at once.
_APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=120"]
#: Dependency levels to follow at most (kcat, librdkafka, and so on).
_MAX_ROUNDS = 6


class KcatSetupError(RuntimeError):
    """No working kcat could be found or installed; the message says what was tried."""


def kcat_path(home: Path) -> Path:
    """A kcat binary that runs; ``home`` is the devstack folder (``devstack.stack.home()``)."""
    return tools.provide(
        what="kcat",
        env_var=ENV_VAR,
        on_path=PACKAGE,
        cached=cached_path(home),
        lock=home / "kcat.lock",
        problem_running=_problem_running,
        install=lambda: _install(home),
        error=KcatSetupError,
    )


def cached_path(home: Path) -> Path:
    """Where the unpacked copy's wrapper script lives."""
    return home / "kcat" / "bin" / "kcat"


# -- installing -----------------------------------------------------------------------


def _install(home: Path) -> Path:
    tried: list[str] = []
    try:
        return _unpack(home)
    except KcatSetupError as exc:
        tried.append(f"- apt-get download + dpkg-deb -x into {home / 'kcat'}: {exc}")

    if _is_root():
        try:
            return _apt_get_install()
        except KcatSetupError as exc:
            tried.append(f"- apt-get install -y --no-install-recommends {PACKAGE}: {exc}")
    else:
        tried.append(f"- apt-get install {PACKAGE}: not tried, this process is not root")

    raise KcatSetupError(
        "no kcat could be found or installed. Tried:\n"
        f"- ${ENV_VAR}: not set\n"
        f"- {PACKAGE} on PATH: not found\n"
        f"- a cached copy at {cached_path(home)}: none that runs\n"
        + "\n".join(tried)
        + f"\nInstall it by hand (Debian or Ubuntu: `sudo apt-get install {PACKAGE}`), "
        f"or set {ENV_VAR}=/path/to/kcat."
    )


def _unpack(home: Path) -> Path:
    """Unpack kcat and the libraries it lacks into ``home / "kcat"``; change nothing else."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "dpkg-query"):
        if shutil.which(tool) is None:
            raise KcatSetupError(f"{tool} is not on PATH (this route needs Debian's apt)")
    updated = _ensure_package_lists()

    # Stale staging folders are from processes that died while holding the lock we hold.
    for stale in home.glob(f"{_STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=home))
    try:
        staging.chmod(0o755)
        try:
            fetched = _fetch_and_unpack(staging)
        except KcatSetupError:
            if updated or not _is_root():
                raise
            # Lists that name versions the mirror no longer has: refresh them, once.
            _apt_get_update()
            for part in ("debs", "root"):
                shutil.rmtree(staging / part, ignore_errors=True)
            fetched = _fetch_and_unpack(staging)
        shutil.rmtree(staging / "debs")
        (staging / "packages.txt").write_text("".join(f"{name}\n" for name in fetched))

        wrapper = staging / "bin" / PACKAGE
        library_dirs = [directory.relative_to(staging) for directory in _library_dirs(staging)]
        _write_wrapper(wrapper, library_dirs)
        problem = _problem_running(wrapper)
        if problem is not None:
            raise KcatSetupError(f"the unpacked kcat does not run: {problem}")

        final = home / "kcat"
        if final.exists():  # a copy that no longer runs (we hold the lock)
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cached_path(home)


def _fetch_and_unpack(staging: Path) -> list[str]:
    """Download and unpack kcat, then, while ``ldd`` finds a library missing, those of the
    unpacked packages' dependencies that are not installed here. Returns the .deb files."""
    debs, root = staging / "debs", staging / "root"
    debs.mkdir(parents=True, exist_ok=True)
    binary = root / "usr" / "bin" / PACKAGE
    wanted: list[list[str]] = [[PACKAGE]]
    considered = {PACKAGE}
    unavailable: list[str] = []
    for level in range(_MAX_ROUNDS):
        new_debs = _download(wanted, debs, unavailable, required=level == 0)
        for deb in new_debs:
            _run(["dpkg-deb", "-x", str(deb), str(root)], timeout=120)
        if not binary.is_file():
            raise KcatSetupError(f"the {PACKAGE} package has no usr/bin/{PACKAGE}")
        missing = _unresolved_libraries(binary, _library_dirs(staging))
        if not missing:
            return sorted(deb.name for deb in debs.glob("*.deb"))
        groups = list(
            {
                tuple(group): group
                for deb in new_debs
                for group in _dependencies(deb)
                if not considered.intersection(group)
            }.values()
        )
        installed = _installed({name for group in groups for name in group})
        wanted = [group for group in groups if not installed.intersection(group)]
        considered.update(name for group in groups for name in group)
        if not wanted:
            break
    fetched = sorted(deb.name for deb in debs.glob("*.deb"))
    raise KcatSetupError(
        f"ldd finds no {', '.join(missing)} after unpacking {', '.join(fetched)}"
        + (f" (could not download {', '.join(unavailable)})" if unavailable else "")
    )


def _download(
    groups: Sequence[Sequence[str]], into: Path, unavailable: list[str], *, required: bool
) -> list[Path]:
    """``apt-get download`` one package of each group (alternatives, first preferred);
    returns the new .deb files. A group none of whose packages can be downloaded is noted
    in ``unavailable`` (``ldd`` tells whether it mattered), or is an error if ``required``."""
    if _is_root():
        # apt downloads as its unprivileged _apt user where that user can write the folder.
        with contextlib.suppress(LookupError, PermissionError):
            shutil.chown(into, user="_apt")
    before = set(into.glob("*.deb"))
    try:
        _apt_get_download([group[0] for group in groups], into)
    except KcatSetupError:
        if required:
            raise
        for group in groups:  # one at a time, to find what apt cannot fetch
            for name in group:
                with contextlib.suppress(KcatSetupError):
                    _apt_get_download([name], into)
                    break
            else:
                unavailable.append(" | ".join(group))
    return sorted(set(into.glob("*.deb")) - before)


def _apt_get_download(names: Sequence[str], into: Path) -> None:
    _run(["apt-get", "download", "-q", *names], cwd=into, timeout=300)


def _dependencies(deb: Path) -> list[list[str]]:
    """The package names a .deb's Pre-Depends and Depends list: one list of alternatives
    per dependency, versions and architecture qualifiers dropped."""
    groups: list[list[str]] = []
    for field in ("Pre-Depends", "Depends"):
        text = _run(["dpkg-deb", "-f", str(deb), field], timeout=60).stdout
        for dependency in " ".join(text.split()).split(","):
            names = [
                re.sub(r"\(.*?\)|\[.*?\]|:\S+", "", alternative).strip()
                for alternative in dependency.split("|")
            ]
            if any(names):
                groups.append([name for name in names if name])
    return groups


def _installed(names: set[str]) -> set[str]:
    """Which of ``names`` dpkg has installed (files on disk: unpacked counts)."""
    if not names:
        return set()
    result = _run(
        ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n", *sorted(names)],
        timeout=60,
        check=False,  # exits 1 when it knows some name not at all
    )
    return {
        package
        for package, _, status in (line.partition("\t") for line in result.stdout.splitlines())
        if len(status) > 1 and status[1] in "iUFWt"
    }


def _library_dirs(staging: Path) -> list[Path]:
    """The unpacked folders that hold shared libraries."""
    root = staging / "root"
    return sorted({path.parent for path in root.rglob("lib*.so*") if not path.is_dir()})


def _ensure_package_lists() -> bool:
    """Make sure apt knows a kcat candidate; returns whether ``apt-get update`` ran."""
    if _candidate() is not None:
        return False
    if not _is_root():
        raise KcatSetupError(
            f"apt's package lists have no {PACKAGE} (run `sudo apt-get update`, or they do "
            "not include Debian's main component)"
        )
    _apt_get_update()
    if _candidate() is None:
        raise KcatSetupError(f"apt has no {PACKAGE} candidate even after apt-get update")
    return True


def _candidate() -> str | None:
    result = _run(["apt-cache", "policy", PACKAGE], timeout=60, check=False)
    match = re.search(r"^\s*Candidate:\s*(\S+)", result.stdout, re.MULTILINE)
    if match is None or match[1] == "(none)":
        return None
    return match[1]


def _apt_get_update() -> None:
    _run(["apt-get", *_APT_LOCK_WAIT, "update", "-q"], timeout=600)


def _apt_get_install() -> Path:
    """The fallback that changes the system: install the package."""
    if shutil.which("apt-get") is None:
        raise KcatSetupError("apt-get is not on PATH")
    if _candidate() is None:
        _apt_get_update()
    _run(
        ["apt-get", *_APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends", PACKAGE],
        timeout=900,
    )
    installed = shutil.which(PACKAGE) or "/usr/bin/kcat"
    problem = _problem_running(Path(installed))
    if problem is not None:
        raise KcatSetupError(f"installed, but {installed} does not run: {problem}")
    return Path(installed)


def _unresolved_libraries(binary: Path, library_dirs: Sequence[Path]) -> list[str]:
    """The shared libraries the dynamic loader would not find for ``binary``."""
    if shutil.which("ldd") is None:
        return []  # `kcat -V` still shows whether it runs
    result = _run(
        ["ldd", str(binary)],
        timeout=30,
        check=False,
        env={"LD_LIBRARY_PATH": ":".join(str(directory) for directory in library_dirs)},
    )
    if result.returncode != 0:
        raise KcatSetupError(f"ldd {binary} failed: {tools.tail(result.stdout + result.stderr)}")
    return re.findall(r"^\s*(\S+) => not found", result.stdout, re.MULTILINE)


def _write_wrapper(wrapper: Path, library_dirs: Sequence[Path]) -> None:
    """A script that runs the unpacked binary with the unpacked libraries, found relative
    to the script itself so that the folder can be renamed (or moved with DEVSTACK_HOME)."""
    search = ":".join(f"$top/{directory}" for directory in library_dirs)
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(
        "#!/bin/sh\n"
        "# kcat unpacked from Debian's packages by devstack/kcat.py (not installed on the\n"
        "# system); its libraries come from ../root. Generated: edits are lost.\n"
        'top=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd) || exit 127\n'
        f'LD_LIBRARY_PATH="{search}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        "export LD_LIBRARY_PATH\n"
        f'exec "$top/root/usr/bin/{PACKAGE}" "$@"\n'
    )
    wrapper.chmod(0o755)


# -- helpers --------------------------------------------------------------------------


def _problem_running(path: Path) -> str | None:
    """None when ``path`` is an executable that answers ``-V``; else what is wrong."""
    return tools.run_problem(path, "-V")[0]


def _run(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(command),
            cwd=cwd,
            env={**os.environ, **_APT_ENV, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KcatSetupError(f"{' '.join(command)}: {exc}") from exc
    if check and result.returncode != 0:
        raise KcatSetupError(
            f"{' '.join(command)} exited with {result.returncode}:\n"
            + tools.tail(result.stdout + result.stderr)
        )
    return result


def _is_root() -> bool:
    return os.geteuid() == 0


# -- producing with it ---------------------------------------------------------------


#: Longest a kcat run may take; a produce gives up on delivery after 30s (see produce_raw).
KCAT_TIMEOUT = 60.0


async def produce_raw(
    bootstrap_servers: str,
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    partition: int | None = None,
    kcat: Path | None = None,
    compression: str | None = None,
) -> None:
    """Produce exactly one record with kcat (librdkafka, not our client), byte for byte as
    given: for records aiokafka cannot make, such as a header name that is not UTF-8.

    The key and the headers travel in kcat's argv, which carries any byte but NUL, and kcat
    splits ``-H`` at the first ``=``: so no NUL in them and no ``=`` in a header name. The
    value goes in a file (kcat sends one file as one message) and may hold any bytes; None
    sends a null value. kcat skips an empty file, so an empty, non-null value cannot be
    sent. ``produce`` (aiokafka) makes those. Without ``partition`` a keyed record goes
    where aiokafka's (and Java's) murmur2 partitioner would put it. ``kcat`` is the binary
    (the ``kcat`` fixture); without it, ``kcat_path`` finds or installs one.
    """
    _require_loopback(bootstrap_servers)
    if key is not None and b"\0" in key:
        raise ValueError("kcat cannot send a key with a NUL byte; use produce() (aiokafka)")
    for name, header_value in headers:
        if not name or b"\0" in name or b"=" in name:
            raise ValueError(
                f"kcat cannot send the header name {name!r} (empty, NUL or '='); "
                "use produce() (aiokafka)"
            )
        if b"\0" in header_value:
            raise ValueError(
                f"kcat cannot send a header value with a NUL byte ({name!r}); "
                "use produce() (aiokafka)"
            )
    if value == b"":
        raise ValueError("kcat cannot send an empty, non-null value; use produce() (aiokafka)")
    if partition is not None and partition < 0:
        raise ValueError(f"partition must be 0 or more, not {partition}")
    binary = kcat if kcat is not None else await asyncio.to_thread(kcat_path, default_home())

    argv: list[bytes] = [
        # No configuration from $HOME/.config/kcat.conf (nor $KCAT_CONFIG, see run_kcat).
        *(b"-F", b"none"),
        *(b"-P", b"-b", bootstrap_servers.encode(), b"-t", topic.encode()),
        # Fail in seconds, not librdkafka's five minutes, when the broker is not there.
        *(b"-m", b"10", b"-X", b"message.timeout.ms=30000"),
        *(b"-X", b"partitioner=murmur2_random"),
    ]
    if partition is not None:
        argv += [b"-p", str(partition).encode()]
    if compression is not None:
        argv += [b"-z", compression.encode()]
    if key is not None:
        argv += [b"-k", key]
    for name, header_value in headers:
        argv += [b"-H", name + b"=" + header_value]

    if value is None:
        # One message from stdin, ":", split at the key delimiter into an empty key and an
        # empty value, which -Z sends as NULL; the -k key, if any, replaces the null key.
        await run_kcat(binary, [*argv, b"-Z", b"-K", b":"], stdin=b":")
        return
    path = await asyncio.to_thread(_value_file, value)
    try:
        await run_kcat(binary, [*argv, os.fsencode(path)])
    finally:
        await asyncio.to_thread(path.unlink)


def _require_loopback(bootstrap_servers: str) -> None:
    """Only the local test brokers: kcat here never talks to anything else."""
    for server in bootstrap_servers.split(","):
        if not tools.is_loopback(server.strip()):
            raise ValueError(f"produce_raw talks only to a loopback broker, not {server!r}")


def _value_file(value: bytes) -> Path:
    descriptor, name = tempfile.mkstemp(prefix="kcat-value-")
    with os.fdopen(descriptor, "wb") as file:
        file.write(value)
    return Path(name)


async def run_kcat(binary: Path, argv: Sequence[bytes], *, stdin: bytes | None = None) -> bytes:
    """Run kcat with ``argv`` (bytes: any but NUL); its stdout, or an error with its stderr."""
    ignored = ("KCAT_CONFIG", "KAFKACAT_CONFIG")  # configuration files kcat would read
    env = {name: value for name, value in os.environ.items() if name not in ignored}
    process = await asyncio.create_subprocess_exec(
        binary,
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(KCAT_TIMEOUT):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"kcat did not finish within {KCAT_TIMEOUT:.0f}s") from None
    if process.returncode != 0:
        raise RuntimeError(
            f"kcat exited with {process.returncode}: {err.decode(errors='replace').strip()}"
        )
    return out
