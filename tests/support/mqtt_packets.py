"""MQTT packets built by hand, for tests and the load generator that must send without a client library."""

from __future__ import annotations


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet at QoS 0 (no packet id): fixed header, topic, payload."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + payload
    length, size = bytearray(), len(body)
    while True:  # "remaining length": 7 bits a byte, least significant first
        size, digit = divmod(size, 128)
        length.append(digit | (0x80 if size else 0))
        if not size:
            return bytes([0x30]) + bytes(length) + body
