"""MQTT packets built by hand, for tests and the load generator that must send without a client library."""

from __future__ import annotations


def publish_packet(topic: str | bytes, payload: bytes, qos: int = 0, mid: int = 1,
                   properties: bytes | None = None) -> bytes:
    """An MQTT PUBLISH packet: fixed header, topic, packet id (QoS 1 and 2), then for MQTT 5 the encoded
    `properties` (b"" for none: a zero length is written), then the payload. Defaults: MQTT 3.1.1, QoS 0."""
    name = topic.encode() if isinstance(topic, str) else topic
    body = len(name).to_bytes(2, "big") + name
    if qos:
        body += mid.to_bytes(2, "big")
    if properties is not None:
        body += varint(len(properties)) + properties
    body += payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


def varint(size: int) -> bytes:
    """MQTT's variable byte integer ("remaining length"): 7 bits a byte, least significant first."""
    out = bytearray()
    while True:
        size, digit = divmod(size, 128)
        out.append(digit | (0x80 if size else 0))
        if not size:
            return bytes(out)
