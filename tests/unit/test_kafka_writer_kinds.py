"""The Kafka writer skips record kinds it does not publish, and refuses a kind that is no record kind at all."""

from __future__ import annotations

import pytest

from connectors.kafka.writer import KafkaJsonWriter


def test_an_unknown_record_kind_raises_instead_of_being_dropped() -> None:
    # Nothing is produced, so no broker is needed (the discard port refuses connections).
    writer = KafkaJsonWriter({"bootstrap.servers": "127.0.0.1:9"}, {"moment": "cx.moments"})
    try:
        with pytest.raises(ValueError, match="'momnet'"):
            writer.add("momnet", [{"customer_id": "c1", "moment_id": "m1"}])
        writer.add("journey_state", [{"customer_id": "c1"}])  # a record kind this writer does not publish
    finally:
        writer.close()
