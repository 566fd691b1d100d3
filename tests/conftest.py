"""Fixtures for real components: mosquitto, serial ports, state directories, the shared datasets."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.serial_ports import PtyPair, SocatSerialDevice

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$EDGE_AGENT_DATA` if set, else `../shared/data` beside the repository."""
    return Path(os.environ.get("EDGE_AGENT_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    data = shared_data_dir()
    if data.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real datasets not found at {data} (set EDGE_AGENT_DATA)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir() -> Path:
    """The shared real datasets (tests using it must carry the `data` marker)."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path}")
    return path


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private mosquitto on a free loopback port, for this test only."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_topic(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to the test (derived from its name, as aiomqtt's tests do)."""
    return "test/" + re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    pair = PtyPair()
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def socat_serial(tmp_path: Path) -> Iterator[SocatSerialDevice]:
    """A serial device path that the test can unplug and replug."""
    device = SocatSerialDevice(tmp_path / "serial")
    device.plug()
    try:
        yield device
    finally:
        device.unplug()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state directory, as systemd's StateDirectory= would give the agent."""
    path = tmp_path / "state"
    path.mkdir()
    return path
