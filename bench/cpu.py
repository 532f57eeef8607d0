"""CPU time of the processes a run is made of, so that a figure per command shows where
the machine's time went: our worker, a separate relay, Kafka, PostgreSQL and the
benchmark itself (producing and reading back).

A service counts its whole process tree: PostgreSQL is a postmaster with a backend per
connection, and a backend that exits in the window is still counted, through the
children's times the postmaster collects when it reaps it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil


def own_seconds(pid: int) -> float | None:
    """User and system CPU seconds of ``pid`` alone; None when the process is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return None
    return times.user + times.system


def tree_seconds(pid: int) -> float | None:
    """User and system CPU seconds of ``pid``, its reaped children and its live
    descendants; None when the process is gone."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                own = child.cpu_times()
            except psutil.NoSuchProcess:
                continue  # exited just now: its parent's children times hold it
            total += own.user + own.system
    except psutil.NoSuchProcess:
        return None
    return total


@dataclass(frozen=True, slots=True)
class CpuSample:
    #: Epoch seconds, as the outcome log's times.
    at: float
    #: CPU seconds so far by name (None: a process that is not there).
    seconds: Mapping[str, float | None]


class CpuMeter:
    """Samples the CPU time of named groups of process trees; the groups named in
    ``alone`` count their processes without their children (the benchmark's children are
    the workers, which have a group of their own)."""

    def __init__(
        self, groups: Mapping[str, Sequence[int]], *, alone: frozenset[str] = frozenset()
    ) -> None:
        self.groups = {name: tuple(pids) for name, pids in groups.items() if pids}
        self.alone = alone

    def sample(self) -> CpuSample:
        seconds: dict[str, float | None] = {}
        for name, pids in self.groups.items():
            measure = own_seconds if name in self.alone else tree_seconds
            parts = [measure(pid) for pid in pids]
            seconds[name] = (
                None
                if any(part is None for part in parts)
                else sum(part for part in parts if part is not None)
            )
        return CpuSample(time.time(), seconds)


def cpu_figures(before: CpuSample, after: CpuSample, commands: int) -> dict[str, object]:
    """Per group: CPU seconds in the window, microseconds per command, and cores busy
    on average; plus the window and the sum over all groups."""
    window = after.at - before.at
    groups: dict[str, object] = {}
    total = 0.0
    for name, start in before.seconds.items():
        end = after.seconds.get(name)
        if start is None or end is None:
            groups[name] = None
            continue
        used = end - start
        total += used
        groups[name] = _figures(used, window, commands)
    return {
        "window_seconds": round(window, 3),
        "processes": groups,
        "all": _figures(total, window, commands),
    }


def _figures(seconds: float, window: float, commands: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "us_per_command": round(seconds / commands * 1e6, 1) if commands else 0.0,
        "cores": round(seconds / window, 2) if window > 0 else 0.0,
    }


def window(samples: Sequence[CpuSample], start: float, end: float) -> tuple[CpuSample, CpuSample]:
    """The samples that bracket ``start`` to ``end`` (epoch seconds) most closely: the
    last one taken at or before ``start`` and the first at or after ``end`` (else the
    nearest there is)."""
    if not samples:
        raise ValueError("no CPU sample was taken")
    before = [sample for sample in samples if sample.at <= start]
    after = [sample for sample in samples if sample.at >= end]
    return (before[-1] if before else samples[0]), (after[0] if after else samples[-1])
