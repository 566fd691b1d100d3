"""The test harness itself: real broker round trips (across an outage) and real serial ports."""

from __future__ import annotations

import pytest
import serial

from tests.support import wait_until
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_client import MqttCollector, connect_publisher
from tests.support.serial_ports import PtyPair, SocatSerialDevice

pytestmark = pytest.mark.integration


def test_qos1_round_trip_survives_broker_restart_on_same_port(
    mqtt_broker: MosquittoBroker, mqtt_topic: str
) -> None:
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [f"{mqtt_topic}/#"])
    publisher = connect_publisher(mqtt_broker.host, mqtt_broker.port)
    try:
        info = publisher.publish(f"{mqtt_topic}/a", b"before", qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
        first = collector.wait_for(1)
        assert (first[0].topic, first[0].payload, first[0].qos) == (f"{mqtt_topic}/a", b"before", 1)

        port = mqtt_broker.port
        mqtt_broker.restart()
        assert mqtt_broker.port == port

        # Both clients reconnect by themselves; the collector resubscribes in on_connect.
        collector.wait_subscribed(count=2, timeout=15)
        wait_until(publisher.is_connected, timeout=15, what="publisher reconnected")
        info = publisher.publish(f"{mqtt_topic}/b", b"after", qos=1)
        info.wait_for_publish(timeout=15)
        received = collector.wait_for(2, timeout=15)
        assert [(m.topic, m.payload) for m in received] == [
            (f"{mqtt_topic}/a", b"before"),
            (f"{mqtt_topic}/b", b"after"),
        ]
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        collector.close()


def test_pty_pair_round_trips_lines_both_ways(pty_pair: PtyPair) -> None:
    with serial.Serial(pty_pair.device, 115200, timeout=2) as port:
        pty_pair.write_line("ts=1,temp=21.5")
        assert port.readline() == b"ts=1,temp=21.5\n"
        port.write(b"ACK 1\n")
        port.flush()
        assert pty_pair.read_line() == "ACK 1"


def test_socat_device_can_be_unplugged_and_replugged(socat_serial: SocatSerialDevice) -> None:
    with serial.Serial(str(socat_serial.device), 9600, timeout=2) as port:
        socat_serial.write_line("first")
        assert port.readline() == b"first\n"
    socat_serial.unplug()
    assert not socat_serial.device.exists()
    socat_serial.replug()
    with serial.Serial(str(socat_serial.device), 9600, timeout=2) as port:
        socat_serial.write_line("second")
        assert port.readline() == b"second\n"
