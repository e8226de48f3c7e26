"""Kafka errors by librdkafka error code: a refused security handshake, a message no fetch can decode, an
output record the broker refuses for what it is, a fatal producer error."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException


class KafkaHandshakeError(ConnectionError):
    """The broker answered but the security handshake (SASL or TLS) failed: retrying cannot fix the settings."""


# librdkafka's codes for a refused SASL or TLS handshake (reported through error_cb, not by list_topics).
HANDSHAKE_ERRORS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
                               KafkaError.UNSUPPORTED_SASL_MECHANISM, KafkaError.ILLEGAL_SASL_STATE})
# Settings whose values are shown in errors; every other security setting is only named (it may be a secret).
_SHOWN_SETTINGS = ("security.protocol", "sasl.mechanism", "sasl.mechanisms")


class HandshakeWatch(logging.Filter):
    """Note librdkafka log lines of connections that failed during the TLS handshake; pass every record on.

    A TLS client at a plaintext listener gets no error code of its own: the connection times out "in state
    SSL_HANDSHAKE" and the client only reports all brokers down.
    """

    # SASL failures arrive through error_cb (_AUTHENTICATION); only TLS needs the log line.
    _STATES = ("in state SSL_HANDSHAKE", "SSL handshake failed")

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(s in msg for s in self._STATES):
            self.failures.append(msg.split("]: ", 1)[-1])
        return True


def security_settings(conf: dict[str, str]) -> str:
    """Name the security settings in effect as their ``CX_KAFKA_*`` variables, values only where not secret."""
    names = []
    for key in sorted(k for k in conf if k.startswith(("security.", "sasl.", "ssl."))):
        env = "CX_KAFKA_" + key.upper().replace(".", "_")
        names.append(f"{env}={conf[key]}" if key in _SHOWN_SETTINGS else f"{env} (set)")
    return ", ".join(names) or "none set (CX_KAFKA_SECURITY_PROTOCOL, CX_KAFKA_SASL_*, CX_KAFKA_SSL_*)"


# Errors of one message the client cannot fetch or unpack (a zstd bomb over receive.message.max.bytes, a corrupt
# record): every fetch of that offset fails the same way, so without a skip the partition never moves again.
UNDECODABLE = frozenset({KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG, KafkaError.MSG_SIZE_TOO_LARGE})
# Fetches of the same offset failing so before it is skipped: a one-off fault (a corrupt transfer) gets retries.


def is_fatal(exc: BaseException) -> bool:
    """Whether an exception from the client carries a fatal librdkafka error (the producer is unusable)."""
    for e in (exc, exc.__cause__):
        if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError) and e.args[0].fatal():
            return True
    return False


# Errors that refuse one record for what it is (its size or content): producing it again cannot succeed, so
# the record is replaced by a small notice on the dead-letter topic instead of blocking the epoch forever.
REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
                      KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE})


def refused_error(exc: BaseException) -> KafkaError | None:
    """The error of a ``produce()`` exception when it refuses the record itself, else None."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        if err.code() in REFUSED and not err.fatal():
            return err
    return None
