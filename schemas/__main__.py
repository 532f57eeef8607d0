"""``python -m schemas`` writes the published contract files; ``--check`` only compares."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from schemas.generate import render

ROOT = Path(__file__).resolve().parent


def stale_files(root: Path = ROOT) -> dict[str, str]:
    """The rendered files whose copy under ``root`` is missing or different."""
    stale = {}
    for relative, text in render().items():
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale[relative] = text
    return stale


def main(argv: Sequence[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas",
        description="Render the JSON Schema and AsyncAPI files from the models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file differs from the models",
    )
    arguments = parser.parse_args(argv)
    stale = stale_files(root)
    if arguments.check:
        if stale:
            print("out of date with the models (run `make schemas`):", file=sys.stderr)
            for relative in stale:
                print(f"  {root.name}/{relative}", file=sys.stderr)
            return 1
        print("contract files are up to date")
        return 0
    for relative, text in stale.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # Fixed newlines so a file renders the same on every platform.
        path.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {root.name}/{relative}")
    if not stale:
        print("contract files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
