"""Python's cyclic garbage collector, tuned for a process that works in batches.

Reference counting frees almost everything a batch makes; the cyclic collector only
has to find reference cycles. But it starts a pass every 700 net allocations of
container objects, while a batch of 500 commands holds between 10,000 and 25,000 of
them at once (records, validated models, customers, events) until it commits. In the
benchmark's 50,000 commands that was about 1,560 passes, a dozen of them walking every
object of the process (modules, schemas, classes) as well: 1.3 s of the worker's 8.8 s
of CPU, for passes that found next to nothing.

So a long-lived process, once started, moves what it has built so far out of the
collector's sight for good (``gc.freeze``: its modules, settings and compiled schemas
never become garbage) and starts a pass only every ``OBJECTS_PER_RECORD`` net
allocations per record of its batch: more than a batch holds, so passes come between
batches rather than inside them, and cyclic garbage stays bounded by that many objects.
"""

from __future__ import annotations

import gc

#: Container objects allowed per batch record between two passes: about twice the
#: most a record was seen to hold (a 500-record batch, 10,000-25,000).
OBJECTS_PER_RECORD = 100

#: CPython's own threshold, kept as the least for small batches.
_DEFAULT_THRESHOLD = 700

#: The most: with a larger batch (``BATCH_MAX_RECORDS`` goes to 10,000, the relay's
#: batch to 50,000) passes may fall inside it again, rather than let cyclic garbage wait
#: for millions of objects.
_MOST = 100_000


def tune_for_batches(records_per_batch: int) -> None:
    """Freeze what exists now and raise the youngest generation's threshold to fit
    ``records_per_batch``; the older generations keep their ratios."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    young = min(_MOST, max(_DEFAULT_THRESHOLD, OBJECTS_PER_RECORD * records_per_batch))
    gc.set_threshold(young, middle, old)
