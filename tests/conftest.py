"""Shared fixtures: a real Tansu broker process per session, and a restartable one for outage tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import state
from tests.kafka_helpers import Broker, free_port, tansu_bin


def pytest_report_header() -> str:
    """Say which build of state/ the tests run on (compiled with mypyc, or pure Python and why)."""
    return state.BUILD.line


@pytest.fixture(scope="session")
def tansu_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The broker binary, copied into the session's temporary directory."""
    return tansu_bin(tmp_path_factory.mktemp("tansu-bin"))


@pytest.fixture(scope="session")
def kafka(tansu_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a broker shared by the session (one topic per test)."""
    logs = tmp_path_factory.mktemp("tansu")
    broker = Broker(tansu_binary, free_port(), logs / "broker.log")
    broker.start()
    try:
        yield broker.addr
    finally:
        broker.stop()


@pytest.fixture
def own_broker(tansu_binary: str, tmp_path: Path) -> Iterator[Broker]:
    """A broker this test may stop and start again on the same port."""
    broker = Broker(tansu_binary, free_port(), tmp_path / "broker.log")
    try:
        yield broker
    finally:
        broker.stop()
