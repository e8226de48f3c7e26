"""``produce_jsonl``: send JSONL lines (a file or the simulator's events) to a topic at a chosen rate
(``moments produce``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path

import orjson

from connectors.kafka.admin import ensure_topics
from connectors.kafka.writer import KafkaJsonWriter
from state.events import unframed

# A UTF-8 byte-order mark (Windows editors) starting a file: the file source drops it, so this tool does too, or
# one file gave one event fewer through Kafka than read directly (its first line a `not_json` dead letter).
_UTF8_BOM = b"\xef\xbb\xbf"
# The common case (an unescaped string id) in one C-level search; anything else is parsed.
_CUSTOMER_ID = re.compile(rb'"customer_id"\s*:\s*"([^"\\]*)"')


def _key_of(line: bytes) -> bytes | None:
    """Return the customer id of a JSON line as bytes (the message key), or None when it has none."""
    m = _CUSTOMER_ID.search(line)
    if m is not None:
        return m.group(1)
    try:
        cid = orjson.loads(line).get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return cid.encode() if isinstance(cid, str) else None


def produce_jsonl(source: str | Path | Iterable[bytes | str], topic: str, conf: dict[str, str],
                  rate: float | None = None, *, create: bool = True,
                  progress: Callable[[int], None] | None = None) -> int:
    """Send lines (a JSONL file or raw messages) to a topic keyed by customer id, optionally at ``rate``/s.

    Lines are sent as they are (invalid ones too: the pipeline dead-letters them); blank lines are skipped.

    Args:
        source: A JSONL file path, or an iterable of messages (bytes or str).
        topic: Destination topic.
        conf: librdkafka settings.
        rate: Messages per second, or None for as fast as possible.
        create: Create the topic if it is missing.
        progress: Called with the count every 10,000 messages.

    Returns:
        The number of messages delivered.
    """
    ensure_topics(conf, [topic], create=create)
    # Input needs no idempotent producer: the pipeline drops duplicate event ids and tolerates reordering
    # within the allowed lateness, and on Tansu idempotence cut this tool from ~350k to ~225k msg/s.
    writer = KafkaJsonWriter({"enable.idempotence": "false", **conf}, {})
    if isinstance(source, str | Path):
        with Path(source).open("rb") as f:
            first = f.readline()
            lines = chain((first[3:] if first.startswith(_UTF8_BOM) else first,), f)
            return _produce_lines(writer, (unframed(ln) for ln in lines), topic, rate, progress)
    return _produce_lines(writer, (ln.encode() if isinstance(ln, str) else ln for ln in source), topic, rate,
                          progress)


def _produce_lines(writer: KafkaJsonWriter, lines: Iterator[bytes], topic: str, rate: float | None,
                   progress: Callable[[int], None] | None) -> int:
    n = 0
    t0 = time.monotonic()
    produce = writer._produce  # noqa: SLF001 - this package's own writer
    for line in lines:
        if not line.strip():
            continue
        produce(topic, _key_of(line), line)
        n += 1
        if rate:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0.001:
                time.sleep(ahead)
        if n % 10_000 == 0:
            # The writer keeps every record until it is acknowledged: flush now and then to bound that.
            if n % 100_000 == 0:
                writer.flush()
            else:
                writer._poll(0)  # noqa: SLF001
            if progress is not None:
                progress(n)
    writer.flush()
    return n
