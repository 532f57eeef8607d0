"""The subscriber's decisions without Kafka: reading records, where to start after a
restart, versions, gaps, duplicate ids and the bootstrap boundary."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from schemas.event import format_sequence
from schemas.topics import Topics
from service.domain import binary_mode
from service.entrypoints.subscriber import (
    Committed,
    Event,
    SequenceGap,
    Tracker,
    bootstrap_end_of,
    bootstrap_metadata,
    parse,
    plan,
)

TOPICS = Topics()
STATE = TopicPartition(TOPICS.state, 0)
STATE_1 = TopicPartition(TOPICS.state, 1)
UPDATED = TopicPartition(TOPICS.events, 0)
ALL = [STATE, STATE_1, UPDATED]


def customer(customer_id: str = "cus_1", email: str = "ada@example.com") -> dict[str, Any]:
    return {
        "id": customer_id, "object": "customer", "created": 1_700_000_000, "delinquent": False,
        "address": None, "description": None, "email": email, "invoice_prefix": "ADA1",
        "next_invoice_sequence": 1, "name": "Ada", "phone": None, "preferred_locales": [],
        "tax_exempt": "none",
    }  # fmt: skip


def document(kind: str, version: int, customer_id: str = "cus_1", **data: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-{kind}-{customer_id}-{version}",
        "source": "customer-service",
        "subject": customer_id,
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "type": f"customer.{kind}",
        "sequence": format_sequence(version),
        "causationid": f"cmd-{version}",
        "data": {"object": customer(customer_id), **data},
    }
    return event


def updated(version: int, customer_id: str = "cus_1") -> dict[str, Any]:
    return document("updated", version, customer_id, previous_attributes={"email": "old@x.io"})


def state(version: int, customer_id: str = "cus_1") -> dict[str, Any]:
    return document("state", version, customer_id)


def event(version: int, customer_id: str = "cus_1", event_id: str | None = None) -> Event:
    return Event(
        customer_id=customer_id,
        version=version,
        event_id=event_id or f"evt-{customer_id}-{version}",
        object=customer(customer_id),
    )


def structured(doc: dict[str, Any]) -> tuple[bytes, binary_mode.Headers]:
    return orjson.dumps(doc), ()


def binary(doc: dict[str, Any]) -> tuple[bytes, binary_mode.Headers]:
    return binary_mode.encode(doc)


def following(versions: dict[str, int] | None = None, **options: Any) -> Tracker:
    tracker = Tracker(TOPICS, versions=versions, **options)
    tracker.begin(dict.fromkeys(ALL, 0), {})
    return tracker


# -- reading records -----------------------------------------------------------------


@pytest.mark.parametrize("encode", [structured, binary])
def test_an_updated_event_is_read_in_either_content_mode(encode: Any) -> None:
    value, headers = encode(updated(4))

    read = parse("updated", b"cus_1", value, headers)

    assert read == Event(
        customer_id="cus_1",
        version=4,
        event_id="evt-updated-cus_1-4",
        object=customer(),
        previous_attributes={"email": "old@x.io"},
        causation_id="cmd-4",
    )


@pytest.mark.parametrize("encode", [structured, binary])
def test_a_state_record_is_read_in_either_content_mode(encode: Any) -> None:
    value, headers = encode(state(7))

    read = parse("state", b"cus_1", value, headers)

    assert read is not None
    assert (read.version, read.object, read.previous_attributes) == (7, customer(), None)


def test_a_state_record_of_a_backfill_has_no_causation() -> None:
    doc = state(2)
    del doc["causationid"]

    read = parse("state", b"cus_1", orjson.dumps(doc), ())

    assert read is not None
    assert read.causation_id is None


@pytest.mark.parametrize(
    ("source", "key", "value"),
    [
        ("updated", b"cus_1", orjson.dumps(state(1))),  # a state record on the updated topic
        ("state", b"cus_1", orjson.dumps(updated(1))),  # and the other way round
        ("state", b"cus_2", orjson.dumps(state(1))),  # key is not the subject
        ("state", None, orjson.dumps(state(1))),
        ("state", b"cus_1", None),  # a tombstone
        ("state", b"cus_1", b"not json"),
        ("state", b"cus_1", orjson.dumps({**state(1), "sequence": "1"})),  # not 20 digits
    ],
)
def test_a_record_that_is_no_event_of_its_topic_is_not_read(
    source: Any, key: bytes | None, value: bytes | None
) -> None:
    assert parse(source, key, value, ()) is None


def test_attributes_and_fields_a_later_service_adds_do_not_make_a_record_unreadable() -> None:
    doc = updated(3)
    doc["newattribute"] = "x"
    doc["data"]["object"]["loyalty_tier"] = "gold"
    doc["data"]["more"] = {"a": 1}

    read = parse("updated", b"cus_1", orjson.dumps(doc), ())

    assert read is not None
    assert read.version == 3
    assert read.object["loyalty_tier"] == "gold"


def test_expanded_subscriptions_are_left_out_of_the_view() -> None:
    doc = updated(3)
    doc["data"]["object"]["subscriptions"] = {"object": "list", "data": []}

    read = parse("updated", b"cus_1", orjson.dumps(doc), ())

    assert read is not None
    assert read.object == customer()


@pytest.mark.parametrize(
    "broken",
    [
        {"subject": 7},
        {"id": None},
        {"data": []},
        {"data": {"previous_attributes": {}}},
        {"data": {"object": {"id": "cus_other"}, "previous_attributes": {}}},
        {"data": {"object": {"id": "cus_1"}, "previous_attributes": None}},
        # Not a customer, though it names one.
        {"data": {"object": {**customer(), "object": "invoice"}, "previous_attributes": {}}},
        {"data": {"object": {**customer(), "delinquent": "yes"}, "previous_attributes": {}}},
        {"data": {"object": {"id": "cus_1"}, "previous_attributes": {}}},  # fields missing
    ],
)
def test_an_event_missing_what_a_view_needs_is_not_read(broken: dict[str, Any]) -> None:
    assert parse("updated", b"cus_1", orjson.dumps({**updated(3), **broken}), ()) is None


def test_a_binary_record_with_a_value_that_is_not_json_is_not_read() -> None:
    _value, headers = binary(state(1))

    assert parse("state", b"cus_1", b"{broken", headers) is None


# -- where a restart starts ------------------------------------------------------------


def test_a_group_without_commits_takes_a_new_cut() -> None:
    decided = plan(TOPICS, ALL, {UPDATED: Committed(-1)})

    assert decided.bootstrap
    assert decided.ends is None
    assert decided.starts == dict.fromkeys(ALL)


def test_a_commit_made_during_the_bootstrap_resumes_it_to_the_same_ends() -> None:
    committed = {
        STATE: Committed(5, bootstrap_metadata(9)),
        STATE_1: Committed(3, bootstrap_metadata(3)),
        UPDATED: Committed(40),
    }

    decided = plan(TOPICS, ALL, committed)

    assert decided.bootstrap
    assert decided.ends == {STATE: 9, STATE_1: 3}
    assert decided.starts == {STATE: 5, STATE_1: 3, UPDATED: 40}


def test_a_commit_made_after_the_bootstrap_follows_from_it() -> None:
    committed = {STATE: Committed(12), UPDATED: Committed(40, "")}

    decided = plan(TOPICS, ALL, committed)

    assert not decided.bootstrap
    assert decided.ends is None
    # A partition without a commit is read from its start.
    assert decided.starts == {STATE: 12, STATE_1: None, UPDATED: 40}


def test_bootstrap_metadata_on_an_updated_partition_is_not_a_bootstrap_end() -> None:
    decided = plan(TOPICS, ALL, {UPDATED: Committed(4, bootstrap_metadata(9))})

    assert not decided.bootstrap


def test_commits_of_other_partitions_are_ignored() -> None:
    other = TopicPartition("elsewhere", 0)

    decided = plan(TOPICS, ALL, {other: Committed(4, bootstrap_metadata(9))})

    assert decided.ends is None
    assert decided.starts == dict.fromkeys(ALL)


@pytest.mark.parametrize(
    ("metadata", "end"),
    [
        (bootstrap_metadata(0), 0),
        (bootstrap_metadata(17), 17),
        ("", None),
        ("free text", None),
        ('{"bootstrap_end": -1}', None),
        ('{"bootstrap_end": true}', None),
        ('{"bootstrap_end": "3"}', None),
        ("[3]", None),
    ],
)
def test_only_a_bootstrap_end_is_read_from_commit_metadata(metadata: str, end: int | None) -> None:
    assert bootstrap_end_of(metadata) == end


# -- the bootstrap boundary ------------------------------------------------------------


def test_a_bootstrap_ends_when_every_state_partition_reached_its_end() -> None:
    tracker = Tracker(TOPICS)
    tracker.begin({STATE: 0, STATE_1: 0, UPDATED: 50}, {STATE: 4, STATE_1: 2})

    assert not tracker.bootstrapped
    assert tracker.bootstrapping == {STATE, STATE_1}
    assert not tracker.reached(STATE, 3)
    assert tracker.reached(STATE, 4)
    assert not tracker.bootstrapped
    assert tracker.reached(STATE_1, 2)
    assert tracker.bootstrapped
    assert tracker.bootstrapping == frozenset()


def test_a_bootstrap_with_nothing_to_read_is_over_at_once() -> None:
    tracker = Tracker(TOPICS)

    tracker.begin({STATE: 4, STATE_1: 0, UPDATED: 0}, {STATE: 4, STATE_1: 0})

    assert tracker.bootstrapped


def test_following_without_ends_is_not_a_bootstrap() -> None:
    assert following().bootstrapped


def test_a_record_past_the_bootstrap_end_is_held_back_for_the_following() -> None:
    tracker = Tracker(TOPICS)
    tracker.begin({STATE: 0, STATE_1: 0, UPDATED: 0}, {STATE: 4, STATE_1: 2})

    assert not tracker.beyond_end(STATE, 3)
    assert tracker.beyond_end(STATE, 4)
    assert not tracker.beyond_end(UPDATED, 99)
    tracker.reached(STATE, 4)
    assert not tracker.beyond_end(STATE, 9)  # its bootstrap is over


def test_commits_carry_the_bootstrap_ends_until_the_bootstrap_is_over() -> None:
    tracker = Tracker(TOPICS)
    tracker.begin({STATE: 0, STATE_1: 0, UPDATED: 50}, {STATE: 4, STATE_1: 2})
    tracker.decide(STATE, 0, event(1))
    tracker.reached(STATE_1, 2)

    assert tracker.offsets() == {
        STATE: (1, bootstrap_metadata(4)),
        STATE_1: (2, bootstrap_metadata(2)),
        UPDATED: (50, ""),
    }
    tracker.reached(STATE, 4)
    assert tracker.offsets() == {STATE: (4, ""), STATE_1: (2, ""), UPDATED: (50, "")}


def test_positions_only_move_forward() -> None:
    tracker = following()
    tracker.decide(UPDATED, 9, None)

    tracker.reached(UPDATED, 3)

    assert tracker.offsets()[UPDATED] == (10, "")


# -- versions, gaps and duplicates ------------------------------------------------------


def test_the_bootstrap_keeps_the_latest_state_of_each_customer() -> None:
    tracker = Tracker(TOPICS)
    tracker.begin({STATE: 0, STATE_1: 0, UPDATED: 0}, {STATE: 10, STATE_1: 0})

    first = tracker.decide(STATE, 0, event(2))
    later = tracker.decide(STATE, 1, event(5))  # compaction may leave any later version
    older = tracker.decide(STATE, 2, event(3))
    again = tracker.decide(STATE, 3, event(5, event_id="evt-backfill"))

    assert first is not None
    assert (first.source, first.during_bootstrap) == ("state", True)
    assert later is not None
    assert later.version == 5
    assert later.gap is None  # a state is whole: a jump is no gap
    assert older is None
    assert again is None  # a backfill of the same version
    assert tracker.version("cus_1") == 5
    assert tracker.offsets()[STATE][0] == 4  # skipped records count as decided


def test_seeded_versions_skip_what_the_caller_already_holds() -> None:
    tracker = following({"cus_1": 4})

    assert tracker.decide(UPDATED, 0, event(3)) is None
    assert tracker.decide(UPDATED, 1, event(4)) is None
    change = tracker.decide(UPDATED, 2, event(5))

    assert change is not None
    assert change.version == 5
    assert tracker.offsets()[UPDATED] == (3, "")


def test_the_next_version_of_a_known_customer_is_applied() -> None:
    tracker = following({"cus_1": 1})
    with_diff = Event("cus_1", 2, "evt-2", customer(), {"email": None}, "cmd-2")

    change = tracker.decide(UPDATED, 0, with_diff)

    assert change is not None
    assert (change.customer_id, change.version, change.source) == ("cus_1", 2, "updated")
    assert (change.previous_attributes, change.event_id, change.causation_id) == (
        {"email": None},
        "evt-2",
        "cmd-2",
    )
    assert change.object == customer()
    assert change.gap is None
    assert tracker.versions == {"cus_1": 2}


def test_a_jump_raises_a_gap_and_leaves_the_record_undecided() -> None:
    tracker = following({"cus_1": 2})
    tracker.decide(UPDATED, 0, event(3))

    with pytest.raises(SequenceGap) as raised:
        tracker.decide(UPDATED, 1, event(6))

    assert (raised.value.customer_id, raised.value.expected, raised.value.got) == ("cus_1", 4, 6)
    assert tracker.offsets()[UPDATED] == (1, "")
    assert tracker.version("cus_1") == 3
    with pytest.raises(SequenceGap):  # not remembered as seen: it raises every time
        tracker.decide(UPDATED, 1, event(6))


def test_a_reported_gap_is_on_the_change_and_its_version_is_taken() -> None:
    tracker = following({"cus_1": 2}, on_gap="report")

    change = tracker.decide(UPDATED, 0, event(5))
    after = tracker.decide(UPDATED, 1, event(6))

    assert change is not None
    assert change.gap is not None
    assert (change.gap.expected, change.gap.got) == (3, 5)
    assert after is not None
    assert after.gap is None
    assert tracker.version("cus_1") == 6


def test_an_accepted_gap_lets_its_record_through_once_with_the_gap_reported() -> None:
    tracker = following({"cus_1": 2})
    with pytest.raises(SequenceGap) as raised:
        tracker.decide(UPDATED, 0, event(5))

    tracker.accept_gap(raised.value)
    change = tracker.decide(UPDATED, 0, event(5))

    assert change is not None
    assert change.gap is not None
    assert (change.version, change.gap.expected, change.gap.got) == (5, 3, 5)
    assert tracker.version("cus_1") == 5
    with pytest.raises(SequenceGap):  # the next gap is a gap of its own
        tracker.decide(UPDATED, 1, event(9))


def test_accepting_one_gap_does_not_let_another_through() -> None:
    tracker = following({"cus_1": 2, "cus_2": 1})
    tracker.accept_gap(SequenceGap("cus_1", 3, 5))
    with pytest.raises(SequenceGap):
        tracker.decide(UPDATED, 0, event(4, "cus_2"))


def test_the_first_event_of_an_unknown_customer_is_no_gap() -> None:
    change = following().decide(UPDATED, 0, event(7))

    assert change is not None
    assert change.gap is None


def test_after_the_bootstrap_state_is_used_only_for_unknown_customers() -> None:
    tracker = following({"cus_1": 3})

    known = tracker.decide(STATE, 0, event(4))
    backfilled = tracker.decide(STATE, 1, event(1, "cus_new"))

    assert known is None  # its updated event carries version 4, with the diff
    assert backfilled is not None
    assert (backfilled.customer_id, backfilled.source) == ("cus_new", "state")
    assert not backfilled.during_bootstrap
    assert tracker.version("cus_1") == 3


def test_a_state_record_after_its_updated_event_is_skipped() -> None:
    tracker = following()
    tracker.decide(UPDATED, 0, event(2, "cus_new"))

    assert tracker.decide(STATE, 0, event(2, "cus_new", event_id="evt-state")) is None


def test_an_id_seen_recently_is_skipped_whatever_its_version() -> None:
    tracker = following()
    tracker.decide(UPDATED, 0, event(1, event_id="evt-a"))

    assert tracker.decide(UPDATED, 1, event(2, event_id="evt-a")) is None
    assert tracker.version("cus_1") == 1


def test_an_id_seen_on_a_skipped_record_is_remembered_too() -> None:
    tracker = following({"cus_1": 5})
    tracker.decide(UPDATED, 0, event(5, event_id="evt-a"))

    assert tracker.decide(UPDATED, 1, event(6, event_id="evt-a")) is None


def test_the_memory_of_ids_is_bounded() -> None:
    tracker = following(remembered_ids=2)
    tracker.decide(UPDATED, 0, event(1, "cus_a", "evt-a"))
    tracker.decide(UPDATED, 1, event(1, "cus_b", "evt-b"))
    tracker.decide(UPDATED, 2, event(1, "cus_c", "evt-c"))  # forgets evt-a

    forgotten = tracker.decide(UPDATED, 3, event(2, "cus_a", "evt-a"))
    remembered = tracker.decide(UPDATED, 4, event(2, "cus_c", "evt-c"))

    assert forgotten is not None
    assert remembered is None


def test_an_unreadable_record_is_decided_and_changes_nothing() -> None:
    tracker = following({"cus_1": 1})

    assert tracker.decide(UPDATED, 7, None) is None
    assert tracker.offsets()[UPDATED] == (8, "")
    assert tracker.versions == {"cus_1": 1}


@pytest.mark.parametrize("options", [{"on_gap": "ignore"}, {"remembered_ids": 0}])
def test_a_tracker_refuses_options_it_has_no_rule_for(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"on_gap|remembered_ids"):
        Tracker(TOPICS, **options)
