"""A stand-in cluster peer for tests: says a process's settings to process 0, then never starts Bytewax."""

from __future__ import annotations

import threading

from flows.cli import build_parser, config_from_args
from flows.cluster_preflight import agree
from flows.dataflow import cluster_hello
from state.batches import Hello
from state.versions import load_versions


def agree_as_peer(run_args: list[str], process: int) -> None:
    """Do process ``process``'s side of the settings exchange as ``moments run RUN_ARGS -i PROCESS`` would.

    Returns once process 0 has answered that every process agrees (raises otherwise).
    """
    cfg = config_from_args(build_parser().parse_args(["run", *run_args, "-i", str(process)]))
    versions = load_versions(cfg.rules)
    hello = cluster_hello(cfg, versions.latest, versions)
    assert hello is not None
    settings = (("--processes", str(len(cfg.addresses))), ("--addresses", ";".join(cfg.addresses)),
                ("-w", str(cfg.workers)), *hello.settings)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            agree(cfg.addresses, Hello(process, settings))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "process 0 never answered"
    if errors:
        raise errors[0]
