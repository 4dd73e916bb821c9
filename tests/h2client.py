"""
An HTTP/2 client for the tests, on the C{h2} package (3.1 to 4.x): it
drives an L{lbproxy._h2.H2Channel} in memory (or writes to any transport)
and collects the events of the frames it gets back.
"""

from __future__ import annotations

from typing import Any, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)


class H2Client:
    """
    The client side of an HTTP/2 connection.

    @ivar machine: the C{h2} client connection.
    @ivar events: every event received so far, in order.
    """

    def __init__(self, validate: bool = True) -> None:
        self.machine = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=validate,
                normalize_outbound_headers=validate,
            )
        )
        self.events: list[Any] = []
        #: Request bodies (and whether END_STREAM follows) waiting for the
        #: server's flow-control windows.
        self.unsent: dict[int, tuple[bytes, bool]] = {}
        self.machine.initiate_connection()

    def outgoing(self) -> bytes:
        """
        What the client has to send.
        """
        return self.machine.data_to_send()

    def receive(self, data: bytes) -> list[Any]:
        """
        Feed what the server sent; acknowledge received data.
        """
        events = self.machine.receive_data(data)
        for event in events:
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                try:
                    self.machine.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                except Exception:
                    pass
        self.events.extend(events)
        self.sendBodies()
        return events

    def sendBodies(self) -> None:
        """
        Send what the windows allow of the bodies waiting.
        """
        machine = self.machine
        for streamId, (body, end) in list(self.unsent.items()):
            try:
                window = machine.local_flow_control_window(streamId)
            except Exception:
                del self.unsent[streamId]
                continue
            while body and window > 0:
                size = min(window, machine.max_outbound_frame_size, len(body))
                last = end and size == len(body)
                machine.send_data(streamId, body[:size], end_stream=last)
                body = body[size:]
                window -= size
            if body:
                self.unsent[streamId] = (body, end)
            else:
                del self.unsent[streamId]

    def request(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        authority: bytes = b"app.example",
        headers: Optional[list[tuple[bytes, bytes]]] = None,
        body: Optional[bytes] = None,
        end: bool = True,
    ) -> int:
        """
        Open a stream with a request; its body, if any, follows.

        @return: the stream id.
        """
        streamId = self.machine.get_next_available_stream_id()
        fields = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", authority),
            (b":path", path),
        ] + list(headers or [])
        self.machine.send_headers(streamId, fields, end_stream=end and body is None)
        if body is not None:
            if body:
                self.unsent[streamId] = (body, end)
                self.sendBodies()
            else:
                self.machine.send_data(streamId, b"", end_stream=end)
        return streamId

    def response(self, streamId: int) -> tuple[Optional[dict[bytes, Any]], bytes, bool]:
        """
        What stream C{streamId} got so far: its head (a dict, repeated
        fields in lists), its body and whether it ended.
        """
        head: Optional[dict[bytes, Any]] = None
        body = []
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != streamId:
                continue
            if isinstance(event, ResponseReceived):
                head = {}
                for name, value in event.headers:
                    if name in head:
                        existing = head[name]
                        head[name] = (existing if isinstance(existing, list) else [existing]) + [value]
                    else:
                        head[name] = value
            elif isinstance(event, DataReceived):
                body.append(event.data)
            elif isinstance(event, StreamEnded):
                ended = True
        return head, b"".join(body), ended

    def resets(self) -> dict[int, int]:
        """
        The streams the server reset, with the error codes.
        """
        return {
            e.stream_id: int(e.error_code) for e in self.events if isinstance(e, StreamReset)
        }

    def goaway(self) -> Optional[int]:
        """
        The error code of the server's GOAWAY, or L{None}.
        """
        for event in self.events:
            if isinstance(event, ConnectionTerminated):
                return int(event.error_code)
        return None


def parseFrames(data: bytes) -> list[Any]:
    """
    The frames in C{data} (what a server wrote, after its connection
    preface is done), parsed by C{hyperframe} without any HPACK state: the
    types, flags, stream ids and, for GOAWAY and RST_STREAM, the codes.
    """
    from hyperframe.frame import Frame

    frames = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames
