"""sparkwire: a small Python client for SparkWire, the SparkOps service-to-service protocol.

Frames are ``sparkops.wire.v1.Frame`` messages behind a 4-byte big-endian length, over TLS 1.3
with mutual authentication and ALPN ``sparkwire/1`` (the standard ``ssl`` module).
docs/wire-protocol.md is the specification this follows. One call at a time per connection.

    with sparkwire.connect("127.0.0.1", 7070, certs="certs", identity="gateway", server_identity="echo") as conn:
        status, reply = conn.unary("/sparkops.testing.v1.EchoService/Get", request_bytes)
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

from sparkops.wire.v1 import frame_pb2  # noqa: E402

ALPN = "sparkwire/1"
MAX_FRAME = 4 * 1024 * 1024
UNAVAILABLE = 14


class SparkWireError(Exception):
    """The connection failed or the peer broke the protocol."""


@dataclass
class Status:
    """How a call ended: a canonical gRPC status code (0 is OK) and a message."""

    code: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0


class Connection:
    """One SparkWire connection; use :func:`connect`."""

    def __init__(self, sock: ssl.SSLSocket, window: int):
        self._sock = sock
        self._next_stream = 1
        self._window = window

    # Framing ------------------------------------------------------------------------------

    def _send(self, frame: frame_pb2.Frame) -> None:
        body = frame.SerializeToString()
        self._sock.sendall(struct.pack(">I", len(body)) + body)

    def _read_exact(self, count: int) -> bytes:
        chunks = []
        while count > 0:
            chunk = self._sock.recv(count)
            if not chunk:
                raise SparkWireError("the connection closed")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def _receive(self) -> frame_pb2.Frame:
        (length,) = struct.unpack(">I", self._read_exact(4))
        if length > MAX_FRAME:
            raise SparkWireError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        frame = frame_pb2.Frame.FromString(self._read_exact(length))
        if frame.stream_id == 0 and frame.HasField("ping") and not frame.ping.ack:
            self._send(frame_pb2.Frame(ping=frame_pb2.Ping(payload=frame.ping.payload, ack=True)))
        return frame

    def _handshake(self) -> None:
        settings = frame_pb2.Settings(version=1, initial_window=self._window, max_frame_size=MAX_FRAME)
        self._send(frame_pb2.Frame(settings=settings))
        while True:
            frame = self._receive()
            if frame.stream_id == 0 and frame.HasField("settings"):
                return

    # Calls ---------------------------------------------------------------------------------

    def server_streaming(self, method: str, request: bytes, timeout: Optional[float] = None) -> Iterator[bytes]:
        """Sends one request and yields each response message; raises :class:`CallError` unless it ends OK."""
        stream_id = self._next_stream
        self._next_stream += 1
        headers = frame_pb2.Headers(method=method, timeout_micros=int(timeout * 1_000_000) if timeout else 0)
        opening = frame_pb2.Frame(stream_id=stream_id, headers=headers, end_stream=True)
        opening.messages.append(request)
        self._send(opening)
        consumed = 0
        while True:
            frame = self._receive()
            if frame.stream_id == 0:
                if frame.HasField("go_away") and frame.go_away.last_stream_id < stream_id:
                    raise CallError(Status(UNAVAILABLE, "the server went away before the call"))
                continue
            if frame.stream_id != stream_id:
                continue
            for message in frame.messages:
                yield message
                consumed += 1
            if frame.HasField("trailers"):
                status = Status(frame.trailers.code, frame.trailers.message)
                if not status.ok:
                    raise CallError(status)
                return
            if frame.HasField("cancel"):
                raise CallError(Status(frame.cancel.code, frame.cancel.message))
            if consumed >= self._window // 2:
                self._send(frame_pb2.Frame(stream_id=stream_id, window_update=frame_pb2.WindowUpdate(increment=consumed)))
                consumed = 0

    def unary(self, method: str, request: bytes, timeout: Optional[float] = None) -> Tuple[Status, Optional[bytes]]:
        """Makes a unary call; returns its status and, when OK, the serialized response."""
        try:
            replies = list(self.server_streaming(method, request, timeout))
        except CallError as error:
            return error.status, None
        if len(replies) != 1:
            return Status(13, f"a unary call returned {len(replies)} messages"), None
        return Status(0), replies[0]

    def close(self) -> None:
        try:
            self._send(frame_pb2.Frame(go_away=frame_pb2.GoAway()))
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CallError(Exception):
    """A call ended with a status other than OK."""

    def __init__(self, status: Status):
        super().__init__(f"status {status.code}: {status.message}")
        self.status = status


def connect(host: str, port: int, *, certs: str, identity: str, server_identity: str,
            window: int = 64, timeout: float = 10.0) -> Connection:
    """Connects with mutual TLS 1.3, checks ALPN and exchanges settings."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(os.path.join(certs, "trust.pem"))
    context.load_cert_chain(os.path.join(certs, f"{identity}.pem"), os.path.join(certs, f"{identity}.key"))
    context.set_alpn_protocols([ALPN])
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        sock = context.wrap_socket(raw, server_hostname=server_identity)
    except Exception:
        raw.close()
        raise
    if sock.selected_alpn_protocol() != ALPN:
        sock.close()
        raise SparkWireError(f"the server did not negotiate ALPN {ALPN}")
    connection = Connection(sock, window)
    connection._handshake()
    return connection
