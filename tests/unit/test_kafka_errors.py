"""Which of aiokafka's errors the Kafka adapter reports as worth retrying, refused for good,
or permanent."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerFenced,
    RecordListTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownError,
    UnsupportedVersionError,
)

from service.adapters.kafka.errors import translated
from service.application.errors import RecordRefusedError, TransientError


def raised_through(error: BaseException, *, sending: bool = False) -> BaseException:
    """What comes out of ``translated()`` when ``error`` is raised inside it."""
    try:
        with translated(sending=sending):
            raise error
    except BaseException as exc:
        return exc
    raise AssertionError("translated() swallowed the error")


@pytest.mark.parametrize(
    "error",
    [KafkaConnectionError(), NotLeaderForPartitionError()],
    ids=lambda error: type(error).__name__,
)
@pytest.mark.parametrize("sending", [False, True])
def test_an_error_aiokafka_calls_retriable_is_transient(error: KafkaError, sending: bool) -> None:
    assert error.retriable
    translated_error = raised_through(error, sending=sending)
    assert isinstance(translated_error, TransientError)
    assert translated_error.__cause__ is error
    assert str(translated_error).startswith(type(error).__name__)


@pytest.mark.parametrize(
    "error", [KafkaTimeoutError(), ProducerFenced()], ids=lambda error: type(error).__name__
)
def test_an_error_a_new_client_cures_is_transient_though_not_retriable_to_aiokafka(
    error: KafkaError,
) -> None:
    assert not error.retriable
    assert isinstance(raised_through(error), TransientError)


@pytest.mark.parametrize(
    "error",
    [
        TopicAuthorizationFailedError(),
        SaslAuthenticationFailed(),
        TransactionalIdAuthorizationFailed(),
        UnsupportedVersionError(),
    ],
    ids=lambda error: type(error).__name__,
)
@pytest.mark.parametrize("sending", [False, True])
def test_an_authentication_or_authorization_error_goes_through_as_permanent(
    error: KafkaError, sending: bool
) -> None:
    assert raised_through(error, sending=sending) is error


@pytest.mark.parametrize(
    "error",
    [MessageSizeTooLargeError(), RecordListTooLargeError(), UnknownError()],
    ids=lambda error: type(error).__name__,
)
def test_a_record_refused_while_sending_is_a_refused_record(error: KafkaError) -> None:
    translated_error = raised_through(error, sending=True)
    assert isinstance(translated_error, RecordRefusedError)
    assert translated_error.__cause__ is error
    assert str(translated_error).startswith(type(error).__name__)


def test_a_refusal_outside_sending_goes_through_as_permanent() -> None:
    error = MessageSizeTooLargeError()
    assert raised_through(error) is error


@pytest.mark.parametrize(
    "error", [TimeoutError("late"), OSError("reset")], ids=lambda error: type(error).__name__
)
@pytest.mark.parametrize("sending", [False, True])
def test_a_timeout_or_an_os_error_is_transient(error: Exception, sending: bool) -> None:
    translated_error = raised_through(error, sending=sending)
    assert isinstance(translated_error, TransientError)
    assert translated_error.__cause__ is error


def test_an_error_not_of_aiokafka_goes_through() -> None:
    error = ValueError("not ours")
    assert raised_through(error, sending=True) is error
