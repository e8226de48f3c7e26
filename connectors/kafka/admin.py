"""Kafka administration: wait for the cluster (naming a refused handshake), and check or create topics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connectors.kafka.config import RateLimit, admin_conf, client_log
from connectors.kafka.errors import HANDSHAKE_ERRORS, HandshakeWatch, KafkaHandshakeError, security_settings

log = logging.getLogger("cx.kafka")


def wait_for_broker(
    conf: dict[str, str], *, deadline_s: float | None = None, sleep: Callable[[float], None] = time.sleep
) -> AdminClient:
    """Return an admin client once the cluster answers, retrying with backoff and logging while it does not.

    Raises:
        TimeoutError: naming the bootstrap servers when ``deadline_s`` passes.
        KafkaHandshakeError: the broker refused the SASL or TLS handshake (naming the security settings, never
            their secret values): wrong protocol, mechanism or credentials are not fixed by waiting.
    """
    refused: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in HANDSHAKE_ERRORS:
            refused.append(err)

    watch = HandshakeWatch()
    # A logger of its own (records still reach client_log's handlers) so the watch sees only this client.
    admin_log = logging.Logger(client_log.name)
    admin_log.parent = client_log
    admin_log.addFilter(watch)
    admin_log.addFilter(RateLimit(10.0))
    settings = admin_conf(conf)
    settings["error_cb"] = on_error
    settings["logger"] = admin_log
    admin = AdminClient(settings)
    start = time.monotonic()
    delay = 0.5
    attempt = 0
    while True:
        try:
            admin.list_topics(timeout=5)
            if attempt:
                log.info("Kafka at %s is reachable", conf.get("bootstrap.servers"))
            return admin
        except KafkaException as e:
            attempt += 1
            admin.poll(0)  # serves error_cb: list_topics only says "transport failure"
            if refused or watch.failures:
                reason = refused[-1].str() if refused else watch.failures[-1]
                raise KafkaHandshakeError(
                    f"Kafka at {conf.get('bootstrap.servers')}: authentication/handshake failed with "
                    f"{security_settings(conf)}: {reason}") from None
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise TimeoutError(f"Kafka at {conf.get('bootstrap.servers')} not reachable: {e}") from None
            log.warning("Kafka at %s not reachable yet (attempt %d); retrying in %.1fs",
                        conf.get("bootstrap.servers"), attempt, delay)
            sleep(delay)
            delay = min(delay * 2, 10.0)


def ensure_topics(conf: dict[str, str], topics: Iterable[str], *, create: bool, partitions: int = 4,
                  admin: AdminClient | None = None) -> dict[str, int]:
    """Return partition counts of the topics, creating missing ones when allowed.

    Raises:
        RuntimeError: naming the topic and broker when a topic is missing and creation is off.
    """
    admin = admin or wait_for_broker(conf)
    wanted = list(dict.fromkeys(topics))
    existing = admin.list_topics(timeout=10).topics
    missing = [t for t in wanted if t not in existing]
    if missing and not create:
        raise RuntimeError(f"Kafka topic(s) {', '.join(missing)} do not exist on {conf.get('bootstrap.servers')} "
                           "(allow creation, or create them)")
    if missing:
        # replication_factor=-1: the cluster's default.replication.factor, not 1 (one broker loss = data loss).
        new = [NewTopic(t, num_partitions=partitions, replication_factor=-1) for t in missing]
        futures = admin.create_topics(new)
        for topic, fut in futures.items():
            try:
                fut.result()
                log.info("created topic %s with %d partitions", topic, partitions)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    for _ in range(50):
        md = admin.list_topics(timeout=10).topics
        counts = {t: len(md[t].partitions) for t in wanted if t in md and md[t].partitions}
        if len(counts) == len(wanted):
            return counts
        time.sleep(0.1)
    raise RuntimeError(f"Kafka topics {wanted} have no partitions on {conf.get('bootstrap.servers')}")
