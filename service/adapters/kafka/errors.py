"""Which of aiokafka's errors a retry may cure, as ``application.errors``.

aiokafka marks an error ``retriable`` when the same request may succeed later (a leader
moved, a broker is away). That flag alone is too narrow for a client that can start
over: a timeout, a fenced or closed producer, a transaction or group in a state that a
new producer or a new session clears are not ``retriable``, yet a fresh client cures
them. Everything else (authentication, authorization, configuration, an unsupported
version, a broker error we cannot place) is permanent: retrying forever would hide it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka.errors import (
    BrokerNotAvailableError,
    CommitFailedError,
    ConcurrentTransactions,
    CorruptRecordException,
    IllegalGenerationError,
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidTimestampError,
    InvalidTxnState,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RebalanceInProgressError,
    RecordListTooLargeError,
    ReplicaNotAvailableError,
    TransactionCoordinatorFenced,
    UnknownError,
    UnknownMemberIdError,
    UnknownProducerId,
)

from service.application.errors import RecordRefusedError, TransientError

#: Not ``retriable`` to aiokafka, yet cured by time or by a new client: the relay starts
#: a new producer (and a fenced one goes back to wait for the lead) on every retry.
CURED_BY_A_NEW_CLIENT: tuple[type[KafkaError], ...] = (
    KafkaTimeoutError,
    KafkaUnavailableError,
    BrokerNotAvailableError,
    ReplicaNotAvailableError,
    ProducerClosed,
    ProducerFenced,
    InvalidProducerEpoch,
    TransactionCoordinatorFenced,
    UnknownProducerId,
    OutOfOrderSequenceNumber,
    ConcurrentTransactions,
    InvalidTxnState,
    IllegalStateError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
    CommitFailedError,
)

#: Broker answers that refuse one record for good, whatever the connection.
RECORD_REFUSED: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    # What aiokafka makes of an error code it has no class for; on a produce that is
    # above all INVALID_RECORD (87: a null key on a compacted topic, say).
    UnknownError,
)


def is_transient(error: KafkaError) -> bool:
    return bool(error.retriable) or isinstance(error, CURED_BY_A_NEW_CLIENT)


@contextmanager
def translated(*, sending: bool = False) -> Iterator[None]:
    """Raise aiokafka's curable errors (and a timeout of ours) as ``TransientError``; with
    ``sending``, a refused record as ``RecordRefusedError``. Any other error goes through as
    it is: it is permanent."""
    try:
        yield
    except KafkaError as exc:
        if sending and isinstance(exc, RECORD_REFUSED):
            raise RecordRefusedError(f"{type(exc).__name__}: {exc}") from exc
        if is_transient(exc):
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        raise
    except (TimeoutError, OSError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
