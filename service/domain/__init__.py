"""The rules, pure: classifying records, deciding a batch, merging an update, building
the messages. No I/O, no clock, no randomness: all of it is given."""

from service.domain.authorization import Authorizer, JwtAuthorizer, Principal, UnsignedAuthorizer
from service.domain.batch import (
    BatchDecisions,
    BatchState,
    Decision,
    ProcessedCommand,
    decide_batch,
)
from service.domain.customer import Address, CustomerState
from service.domain.events import EventContext, OutboundMessage, dead_letter_message
from service.domain.inbound import (
    Classified,
    InboundRecord,
    Invalid,
    Limits,
    Poison,
    Valid,
    classify,
)
from service.domain.messages import BatchMessages, messages_for
from service.domain.outbox import OutboxRow, row_fingerprint
from service.domain.update import Applied, Refused, apply_update, merge

__all__ = [  # noqa: RUF022 - grouped by kind, not sorted
    # records in
    "Classified",
    "InboundRecord",
    "Invalid",
    "Limits",
    "Poison",
    "Valid",
    "classify",
    # who may act
    "Authorizer",
    "JwtAuthorizer",
    "Principal",
    "UnsignedAuthorizer",
    # deciding
    "Applied",
    "BatchDecisions",
    "BatchState",
    "Decision",
    "ProcessedCommand",
    "Refused",
    "apply_update",
    "decide_batch",
    "merge",
    # state
    "Address",
    "CustomerState",
    # messages out
    "BatchMessages",
    "EventContext",
    "OutboundMessage",
    "OutboxRow",
    "dead_letter_message",
    "messages_for",
    "row_fingerprint",
]
