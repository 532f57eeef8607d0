"""Use cases: the batch transaction, the outbox relay, outbox health."""
