"""RFC 6455 framing of acknowledgements as the hub reads them (``2-5`` over §5 of RFC 6455).

The hub splits client frames itself (several per read), so these checks write frames
byte by byte, many per TCP segment, fragmented, interleaved with pings, oversized and
with a close — on a raw socket, since a websocket library would never produce most of it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from urllib.parse import urlsplit

from fhircast_helpers import WAIT, new_topic, patient_open, publish, subscribe_form, wait_until


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 §5.2, §5.3)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | size)
    elif size <= 0xFFFF:
        head = struct.pack("!BBH", (0x80 if fin else 0) | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", (0x80 if fin else 0) | opcode, 0x80 | 127, size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawChannel:
    """A subscription whose websocket is a plain TCP socket."""

    def __init__(self, hub_url: str, topic: str) -> None:
        answer = subscribe_form(hub_url, topic, "Patient-open")
        assert answer.status_code == 202, answer.text
        url = urlsplit(answer.json()["hub.channel.endpoint"])
        self.sock = socket.create_connection((url.hostname, url.port), timeout=WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        opcode, confirmation = self.read()
        assert opcode == 1 and json.loads(confirmation)["hub.mode"] == "subscribe"

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the hub")
        return data

    def read(self) -> tuple[int, bytes]:
        """Return (opcode, payload) of the next server frame (unmasked, unfragmented)."""
        while len(self.buf) < 2:
            self.buf += self._recv()
        size, head = self.buf[1] & 0x7F, 2
        if size == 126:
            while len(self.buf) < 4:
                self.buf += self._recv()
            size, head = struct.unpack("!H", self.buf[2:4])[0], 4
        while len(self.buf) < head + size:
            self.buf += self._recv()
        opcode, payload = self.buf[0] & 0x0F, self.buf[head : head + size]
        self.buf = self.buf[head + size :]
        return opcode, payload

    def event_id(self) -> str:
        opcode, payload = self.read()
        assert opcode == 1
        return str(json.loads(payload)["id"])


def ack(event_id: str) -> bytes:
    return json.dumps({"id": event_id, "status": 200}).encode()


def pending(hub, topic: str) -> int:
    return int(hub.call(hub.hub.subscriptions, topic)[0].pending_acks)


def test_acks_in_one_segment_byte_by_byte_and_fragmented_with_a_ping_between(hub):
    topic = new_topic()
    channel = RawChannel(hub.url, topic)
    for _ in range(6):
        assert publish(hub.url, patient_open(topic)).status_code == 202
    ids = [channel.event_id() for _ in range(6)]
    assert pending(hub, topic) == 6
    # two acks in one TCP segment
    channel.sock.sendall(frame(1, ack(ids[0])) + frame(1, ack(ids[1])))
    wait_until(lambda: pending(hub, topic) == 4, what="two acks from one segment")
    # one ack a byte at a time
    for byte in frame(1, ack(ids[2])):
        channel.sock.sendall(bytes([byte]))
        time.sleep(0.002)
    wait_until(lambda: pending(hub, topic) == 3, what="an ack sent byte by byte")
    # one ack in three fragments with a ping between them (§5.4, §5.5.2)
    text = ack(ids[3])
    channel.sock.sendall(frame(1, text[:5], fin=False) + frame(9, b"are you there"))
    assert channel.read() == (10, b"are you there")  # the pong answers mid-message
    channel.sock.sendall(frame(0, text[5:9], fin=False))
    channel.sock.sendall(frame(0, text[9:]))
    wait_until(lambda: pending(hub, topic) == 2, what="a fragmented ack")
    # a 16-bit length, and the last two acks split across segments mid-header
    padded = json.dumps({"id": ids[4], "status": 200, "pad": "x" * 300}).encode()
    data = frame(1, padded) + frame(1, ack(ids[5]))
    channel.sock.sendall(data[:3])
    time.sleep(0.05)
    channel.sock.sendall(data[3:])
    wait_until(lambda: pending(hub, topic) == 0, what="acks split across segments")
    assert hub.hub.stats.malformed_frames == 0
    channel.sock.close()


def test_oversized_frame_is_refused_with_1009_before_its_payload(hub):
    topic = new_topic()
    channel = RawChannel(hub.url, topic)
    # only the header of a 1 MiB frame (the hub's limit is 256 KiB): no payload follows
    channel.sock.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 20) + os.urandom(4))
    opcode, payload = channel.read()
    assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1009
    wait_until(lambda: not hub.call(hub.hub.subscriptions, topic), what="subscription removed")
    channel.sock.close()


def test_close_frame_is_echoed_and_ends_the_subscription(hub):
    topic = new_topic()
    channel = RawChannel(hub.url, topic)
    channel.sock.sendall(frame(8, struct.pack("!H", 1000) + b"bye"))
    opcode, payload = channel.read()
    assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1000
    wait_until(lambda: not hub.call(hub.hub.subscriptions, topic), what="subscription removed")
    channel.sock.close()


def test_invalid_utf8_text_frame_drops_the_connection(hub):
    topic = new_topic()
    channel = RawChannel(hub.url, topic)
    channel.sock.sendall(frame(1, b'{"id": "\xff\xfe", "status": 200}'))
    wait_until(lambda: not hub.call(hub.hub.subscriptions, topic), what="subscription removed")
    channel.sock.close()


def test_acks_in_any_valid_json_spelling_count_and_invalid_json_does_not(hub):
    topic = new_topic()
    channel = RawChannel(hub.url, topic)
    for _ in range(5):
        assert publish(hub.url, patient_open(topic)).status_code == 202
    ids = [channel.event_id() for _ in range(5)]
    spellings = [
        f'{{"id":"{ids[0]}","status":0200}}',  # not JSON: no leading zeros
        f' {{\n "id" : "{ids[1]}" ,\t"status" : "202" }}\r\n',
        f'{{"status": 200, "id": "{ids[2]}"}}',
        f'{{"id": "{ids[3]}", "status": " 200 "}}',
        f'{{"id": "{ids[4]}", "status": 200, "note": "\\"quoted\\""}}',
    ]
    channel.sock.sendall(b"".join(frame(1, text.encode()) for text in spellings))
    wait_until(lambda: pending(hub, topic) == 1, what="four valid acks")
    assert hub.hub.stats.malformed_frames == 1
    channel.sock.sendall(frame(1, f'{{"id":"{ids[0]}","status":200}}'.encode()))
    wait_until(lambda: pending(hub, topic) == 0, what="the last ack")
    channel.sock.close()
