"""``python -m faults``: run the fault scenarios and print what the checker found.

Exit status: 0 when no scenario has a violation, 1 when one has, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from faults.scenarios import SCENARIOS, ScenarioResult, SuiteOptions, SuiteResult, run_suite
from faults.stack import HOME_VARIABLE

COLUMNS = (
    "scenario",
    "commands",
    "applied",
    "rejected",
    "dead-lettered",
    "duplicate events",
    "violations",
    "duration",
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m faults",
        description=(
            "Run the fault-injection scenarios against the suite's own Kafka and PostgreSQL "
            "and check every invariant afterwards."
        ),
        epilog="scenarios: " + ", ".join(scenario.name for scenario in SCENARIOS),
    )
    parser.add_argument(
        "--short", action="store_true", help="a few scenarios with a small load (for CI)"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--commands", type=int, help="records of load per scenario")
    parser.add_argument("--rate", type=float, help="records sent per second")
    parser.add_argument("--seed", type=int, help="seed of the load")
    parser.add_argument(
        "--home",
        type=Path,
        help=f"where the suite's own stack lives (default ${HOME_VARIABLE} or .devstack/faults)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep every scenario's database and topics"
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="run every scenario's workers in signed mode (a JWT per command)",
    )
    parser.add_argument(
        "--binary-events",
        action="store_true",
        help="run every scenario's workers with EVENT_CONTENT_MODE=binary",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help=(
            "workers reach Kafka over SSL (CA-verified) and PostgreSQL with verify-full "
            "(a TLS-capable server of the suite's own); scenarios through Toxiproxy are left out"
        ),
    )
    parser.add_argument(
        "--worker-command",
        help="run this command line as the worker instead of `customer-service worker`",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--verbose", action="store_true", help="also the harness's own Kafka client logs"
    )
    args = parser.parse_args(argv)
    if args.commands is not None and args.commands < 10:
        parser.error("--commands must be at least 10")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    known = {scenario.name for scenario in SCENARIOS}
    for name in args.scenario:
        if name not in known:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(sorted(known))}")
    return args


def table(results: Sequence[ScenarioResult]) -> str:
    rows = [
        (
            result.scenario.name,
            str(result.check.commands),
            str(result.check.applied),
            str(result.check.rejected),
            str(result.check.dead_lettered),
            str(result.check.duplicate_events),
            str(len(result.check.violations)),
            f"{result.duration:.1f}s",
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(COLUMNS), rule, *(line(row) for row in rows)])


def report(suite: SuiteResult) -> str:
    parts = [table(suite.results), ""]
    for result in suite.results:
        parts.append(f"{result.scenario.name}: {result.scenario.summary}")
        parts.extend(f"  fault: {fault}" for fault in result.faults)
        parts.extend(f"  note: {note}" for note in result.notes)
        parts.extend(f"  VIOLATION {line}" for line in result.check.summary())
    parts.append("")
    verdict = "no violations" if suite.ok else "VIOLATIONS FOUND"
    parts.append(f"{verdict}; {len(suite.results)} scenario(s) in {suite.duration:.1f}s")
    parts.append(f"logs: {suite.run_dir}")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    if not args.verbose:
        # The suite's own producer and readers complain loudly while the broker is down
        # on purpose; the workers' logs keep their side of it.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"{time.monotonic() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    options = SuiteOptions(
        short=args.short,
        scenarios=args.scenario,
        commands=args.commands,
        rate=args.rate,
        seed=args.seed,
        home=args.home,
        keep=args.keep,
        signed=args.signed,
        binary_events=args.binary_events,
        tls=args.tls,
        worker_command=shlex.split(args.worker_command or ""),
        progress=progress,
    )
    suite = asyncio.run(run_suite(options))
    print(report(suite))
    return 0 if suite.ok else 1


if __name__ == "__main__":
    sys.exit(main())
