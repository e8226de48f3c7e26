"""Pipeline configuration: one frozen object built from CLI arguments and CX_* environment variables."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from connectors import records
from state.outputs import DEFAULT_DEAD_LETTER_MAX_BYTES, MAX_DEAD_LETTER_MAX_BYTES
from state.rules import parse_duration

DEFAULT_CLICKHOUSE_DSN = "chdb:///./data/cx.chdb"
DEFAULT_METRICS_PORT = 9464
DEFAULT_HTTP_HOST = "0.0.0.0"  # noqa: S104 - Prometheus scrapes a worker from another pod or container
DEFAULT_SHARDS = 64
# Input and output topics by name (``CX_TOPIC_<NAME>`` overrides one); defined with the record kinds.
DEFAULT_TOPICS = dict(records.DEFAULT_TOPICS)


class ConfigError(ValueError):
    """Invalid configuration; the message names the setting and the problem."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"configuration: {setting}: {problem}")
        self.setting = setting


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as Bytewax's cluster addresses are written.

    Raises:
        ValueError: not host:port with a port 1..65535.
    """
    host, sep, port = address.strip().rpartition(":")
    v6 = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if v6 else host
    ok_host = _V6.fullmatch(host) if v6 else _HOST.fullmatch(host)
    if not sep or not ok_host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port with a port 1..65535")
    return host, int(port)


_HOST = re.compile(r"[A-Za-z0-9_.-]{1,253}")  # a name or an IPv4 address ([v6] is written in brackets)
_V6 = re.compile(r"[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]+)?")


class RunError(RuntimeError):
    """A failure while running whose message names the file or setting and the problem; exits with ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Everything ``moments run`` needs; secrets stay in the environment and are never stored here."""

    source: str = "simulator"
    sinks: tuple[str, ...] = ("clickhouse",)
    clickhouse_dsn: str = DEFAULT_CLICKHOUSE_DSN
    rules: Path | None = None
    clock: str = "replay"
    lateness_ms: int = 30_000
    # Live: the urgent lane's lateness (state.urgent); None = half the smallest latency target below the lateness.
    urgent_lateness_ms: int | None = None
    max_future_ms: int = 3_600_000
    shards: int = DEFAULT_SHARDS
    workers: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    metrics_port: int | None = DEFAULT_METRICS_PORT
    http_host: str = DEFAULT_HTTP_HOST
    # Every process's look-up API as host:port, in process order (cluster); empty: the -a hosts, --metrics-port.
    http_peers: tuple[str, ...] = ()
    recovery_dir: Path | None = None
    snapshot_interval_s: float = 10.0
    backup_interval_s: float = 0.0
    max_customers: int | None = None
    sim_customers: int = 5_000
    sim_minutes: float = 180.0
    sim_seed: int = 7
    sim_rate: float | None = None
    kafka_bootstrap: str | None = None
    kafka_topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    kafka_create_topics: bool = True
    kafka_partitions: int = 4
    kafka_stop_at_end: bool = False
    tick_s: float = 1.0
    status: str = "auto"  # auto | tty | log | off
    batch_lines: int = 4096
    ch_batch_rows: int = 20_000
    dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_MAX_BYTES
    # Store the valid input events in ClickHouse (`events`, 7 days), which explaining a moment reads.
    events_table: bool = True

    def kafka_overrides(self) -> dict[str, str]:
        """librdkafka settings given on the command line (the environment supplies the rest)."""
        return {"bootstrap.servers": self.kafka_bootstrap} if self.kafka_bootstrap else {}

    @property
    def live(self) -> bool:
        """Whether the wall clock advances the watermark."""
        return self.clock == "live"

    @property
    def jsonl_dirs(self) -> list[Path]:
        """Directories of ``jsonl:DIR`` sinks."""
        return [Path(s[6:]) for s in self.sinks if s.startswith("jsonl:")]

    @property
    def wants_clickhouse(self) -> bool:
        """Whether a ClickHouse sink is configured."""
        return "clickhouse" in self.sinks

    @property
    def keeps_events(self) -> bool:
        """Whether the shards hand their events to the ClickHouse sink's ``events`` table."""
        return self.wants_clickhouse and self.events_table

    @property
    def wants_kafka(self) -> bool:
        """Whether Kafka output topics are configured."""
        return "kafka" in self.sinks

    @property
    def peers(self) -> tuple[str, ...]:
        """Every process's HTTP ``host:port`` in process order: ``--http-peers``, else each ``-a`` host with
        this process's ``--metrics-port`` (processes on separate hosts); empty outside a cluster."""
        if self.http_peers or len(self.addresses) <= 1:
            return self.http_peers
        port = self.metrics_port if self.metrics_port is not None else DEFAULT_METRICS_PORT
        return tuple(f"{a.rsplit(':', 1)[0]}:{port}" for a in self.addresses)

    def validate(self) -> PipelineConfig:
        """Check cross-field rules.

        Returns:
            self.

        Raises:
            ConfigError: naming the setting.
        """
        if not (self.source in ("simulator", "kafka") or self.source.startswith("file:")):
            raise ConfigError("--source", f"must be simulator, kafka or file:PATH, got {self.source!r}")
        if self.source.startswith("file:") and not self.source[5:]:
            raise ConfigError("--source", "file: needs a path, e.g. file:events.jsonl")
        if self.source.startswith("file:") and any(not p.strip() for p in self.source[5:].split(",")):
            # An empty entry would read the current directory's *.jsonl (a trailing comma, say).
            raise ConfigError("--source", f"{self.source!r} has an empty path in its list")
        for s in self.sinks:
            if not (s in ("clickhouse", "kafka", "none") or s.startswith("jsonl:")):
                raise ConfigError("--sink", f"must be jsonl:DIR, clickhouse, kafka or none, got {s!r}")
            if s.startswith("jsonl:") and not s[6:].strip():
                raise ConfigError("--sink", "jsonl: needs a directory, e.g. jsonl:out")
        if self.status not in ("auto", "tty", "log", "off"):
            raise ConfigError("--status (CX_STATUS)", f"must be auto, tty, log or off, got {self.status!r}")
        if not (self.clickhouse_dsn.startswith(("chdb://", "http://", "https://"))):
            raise ConfigError(
                "--clickhouse", f"DSN must start with chdb://, http:// or https://, got {_safe(self.clickhouse_dsn)!r}"
            )
        dsn_problem = _dsn_problem(self.clickhouse_dsn)
        if dsn_problem:
            raise ConfigError("--clickhouse/--sink", f"{_safe(self.clickhouse_dsn)!r}: {dsn_problem}")
        if self.clock not in ("replay", "live"):
            raise ConfigError("--clock", f"must be replay or live, got {self.clock!r}")
        if not 1 <= self.shards <= 4096:
            raise ConfigError("--shards", f"must be 1..4096, got {self.shards}")
        if not 1 <= self.workers <= MAX_WORKERS:
            # Each worker is a thread with its own copy of every operator: a thousand grew to 14 GB and took
            # minutes to start, deaf to SIGTERM. Scale beyond one machine's cores with processes (-i/-a).
            raise ConfigError("--workers", f"must be 1..{MAX_WORKERS} per process (add processes to scale out), "
                              f"got {self.workers}")
        for address in self.addresses:
            try:
                split_address(address)
            except ValueError as e:
                raise ConfigError("--addresses", f"{e} (one host:port per process, separated by ;)") from None
        if len(self.addresses) > 1 and self.process_id is None:
            raise ConfigError("--process-id", f"is required with an --addresses list of {len(self.addresses)} "
                              f"processes: this process's place in it, 0..{len(self.addresses) - 1}")
        if self.process_id is not None:
            if not self.addresses:
                raise ConfigError("--addresses", "is required with --process-id")
            if not 0 <= self.process_id < len(self.addresses):
                raise ConfigError("--process-id", f"must be 0..{len(self.addresses) - 1}, got {self.process_id}")
        if not 0 < self.snapshot_interval_s <= 86_400:  # also refuses NaN and infinity
            raise ConfigError("--snapshot-interval", f"must be a positive number of seconds, at most 86400, got "
                              f"{self.snapshot_interval_s}")
        if not 0 < self.tick_s <= 60:
            raise ConfigError("--tick", f"must be a number of seconds in (0, 60], got {self.tick_s}")
        if self.sim_rate is not None and not 0 < self.sim_rate <= 1e9:
            raise ConfigError("--rate", f"must be a positive number of events per second, got {self.sim_rate}")
        if self.max_customers is not None and self.max_customers < self.shards:
            # The cap is shared out among the shards (max_customers // shards each): below one per shard a
            # shard would have no room and every new customer would shed the previous one.
            raise ConfigError("--max-customers", f"must be at least --shards ({self.shards}) so that every shard "
                              f"can hold a customer, got {self.max_customers}")
        if not 0 <= self.lateness_ms <= MAX_LATENESS_MS:
            raise ConfigError("--lateness", f"must be 0..30d, got {self.lateness_ms} ms")
        if self.urgent_lateness_ms is not None and not 0 <= self.urgent_lateness_ms < max(self.lateness_ms, 1):
            raise ConfigError("--urgent-lateness", f"must be below --lateness ({self.lateness_ms} ms), or 0 to turn "
                              f"the urgent lane off, got {self.urgent_lateness_ms} ms")
        if not 0 < self.max_future_ms <= MAX_LATENESS_MS:
            raise ConfigError("--max-future", f"must be more than 0 and at most 30d, got {self.max_future_ms} ms")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError("--metrics-port", f"must be 0..65535, got {self.metrics_port}")
        if not self.http_host.strip():
            raise ConfigError("--http-host", "must be an address to bind, e.g. 0.0.0.0 (every interface) or 127.0.0.1")
        if self.http_peers:
            if len(self.http_peers) != max(1, len(self.addresses)):
                raise ConfigError("--http-peers (CX_HTTP_PEERS)", f"lists {len(self.http_peers)} processes but "
                                  f"--addresses lists {len(self.addresses)}: give one host:port per process, in order")
            for peer in self.http_peers:
                try:
                    split_address(peer)
                except ValueError:
                    raise ConfigError("--http-peers (CX_HTTP_PEERS)", f"{peer!r} is not host:port") from None
        if not 1 <= self.kafka_partitions <= MAX_KAFKA_PARTITIONS:
            # Partitions of the topics this run creates: each is a consumer in the worker; 100,000 were created
            # on the broker and the worker never got going.
            raise ConfigError("--kafka-partitions (CX_TOPIC_PARTITIONS)",
                              f"must be 1..{MAX_KAFKA_PARTITIONS}, got {self.kafka_partitions}")
        sim_problem = simulation_problem(self.sim_customers, self.sim_minutes)
        if sim_problem:
            raise ConfigError("--customers/--minutes", sim_problem)
        if not 1 <= self.dead_letter_max_bytes <= MAX_DEAD_LETTER_MAX_BYTES:
            raise ConfigError("--dead-letter-max-bytes", f"must be 1..{MAX_DEAD_LETTER_MAX_BYTES} (the encoded record "
                              f"must stay below Kafka's 1 MB message limit), got {self.dead_letter_max_bytes}")
        dirs = [d.resolve() for d in self.jsonl_dirs]
        twice = sorted({str(d) for d in dirs if dirs.count(d) > 1})
        if twice:
            raise ConfigError("--sink", f"jsonl:{twice[0]} is given twice: every record would be written twice")
        for d in self.jsonl_dirs:
            problem = _directory_problem(d)
            if problem:
                raise ConfigError("--sink", f"jsonl:{d}: {problem}")
        if self.rules is not None and not self.rules.is_file() and not self.rules.is_dir():
            raise ConfigError("--rules", f"file or directory not found: {self.rules}")
        return self


MAX_LATENESS_MS = 30 * 86_400_000
MAX_WORKERS = 64


def _directory_problem(d: Path) -> str:
    """Return why a JSONL sink cannot write to directory ``d`` (created here if missing), or ""."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "exists and is not a directory"
    except OSError as e:
        return f"cannot create the directory ({e.strerror or e})"
    if not d.is_dir():
        return "is not a directory"
    if not os.access(d, os.W_OK | os.X_OK):
        return "the directory is not writable"
    for f in sorted(d.glob("*.jsonl")):
        if not f.is_file():
            return f"{f.name} in it is not a regular file"
    try:
        # Root passes access() everywhere; some file systems (/sys) still refuse new files.
        with tempfile.NamedTemporaryFile(dir=d, prefix=".cx-probe-"):
            pass
    except OSError as e:
        return f"cannot create files in it ({e.strerror or e})"
    return ""
# Simulated traffic starts in 2026; ten years keeps every event inside the valid 2000..2100 range.
MAX_SIM_MINUTES = 10 * 365 * 24 * 60
MAX_SIM_CUSTOMERS = 10_000_000
MAX_KAFKA_PARTITIONS = 1000


def simulation_problem(customers: int, minutes: float) -> str | None:
    """Return what is wrong with simulator settings, or None."""
    if customers < 1 or not minutes > 0:
        return "must be positive"
    if customers > MAX_SIM_CUSTOMERS:
        return f"--customers must be at most {MAX_SIM_CUSTOMERS:,} (about ten events each), got {customers:,}"
    if minutes > MAX_SIM_MINUTES:
        return f"--minutes must be at most {MAX_SIM_MINUTES} (ten years), got {minutes:g}"
    return None


def _safe(dsn: str) -> str:
    """Hide credentials in a DSN for messages and logs."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return dsn


def _dsn_problem(dsn: str) -> str | None:
    """Return what is wrong with a ClickHouse DSN's location, or None."""
    parsed = urlparse(dsn)
    if parsed.scheme == "chdb":
        if parsed.netloc in ("memory", ":memory:"):
            return None
        if parsed.netloc:
            return "use chdb:///absolute/path, chdb:///./relative/path or chdb://memory"
        if parsed.path.strip("/") in ("", ".", "~"):
            return "no database path: use chdb:///absolute/path or chdb:///./relative/path (chdb://memory for none)"
        return None
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as e:  # a port that is not a number or out of range
        return f"bad port ({e})"
    if not host:
        return "no host: use http(s)://[user@]host[:port][/database]"
    del port
    return None


def redacted_dsn(dsn: str) -> str:
    """Public form of ``_safe`` for start-up summaries."""
    return _safe(dsn)


def env_default(name: str, default: str | None = None) -> str | None:
    """Return ``CX_<NAME>`` from the environment, or the default."""
    return os.environ.get(f"CX_{name}", default)


def duration_ms(setting: str, value: str) -> int:
    """Parse a duration setting ("0" allowed), raising ConfigError naming it."""
    if value.strip() in ("0", "0s", "0ms"):
        return 0
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ConfigError(setting, str(e)) from None
