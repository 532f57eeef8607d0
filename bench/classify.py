"""CPU per record of ``classify`` (read, parse, validate, authorize one command), the
pure first step of every record, without Kafka or PostgreSQL:

    .venv/bin/python -m bench.classify [--runs 9] [--records 20000]

It classifies the README's example command (``schemas/examples/customer.update.json``)
over and over and prints the median, min and max of the process CPU time per record over
the runs. Compare two checkouts in the same sitting, interleaved: the machine's speed
drifts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from service.domain.authorization import UnsignedAuthorizer
from service.domain.inbound import InboundRecord, Limits, classify

EXAMPLE = Path(__file__).resolve().parent.parent / "schemas/examples/customer.update.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    value = EXAMPLE.read_bytes()
    record = InboundRecord("customer.update", 0, 0, 0, 0, b"cus_NffrFeUfNV2Hib", value, ())
    limits, authorizer = Limits(), UnsignedAuthorizer()
    per_record = []
    for _ in range(args.runs):
        started = time.process_time()
        for _ in range(args.records):
            classify(record, limits, authorizer)
        per_record.append((time.process_time() - started) / args.records * 1e6)
    print(
        f"classify: {statistics.median(per_record):.2f} us CPU per record (median of "
        f"{args.runs} runs; min {min(per_record):.2f}, max {max(per_record):.2f})"
    )


if __name__ == "__main__":
    main()
