"""Type stub of the compiled frame protocol of an open connection (see ``_wsframes.pyx``)."""

from typing import Any

from websockets.frames import Close, Frame
from websockets.protocol import Side, State

__all__ = ["FrameProtocol"]

class FrameProtocol:
    """websockets' ``ServerProtocol`` once the upgrade is accepted, compiled."""

    side: Side
    extensions: tuple[()]
    subprotocol: None
    origin: None
    logger: Any
    debug: bool
    close_rcvd: Close | None
    close_sent: Close | None
    close_rcvd_then_sent: bool | None
    handshake_exc: Exception | None
    parser_exc: Exception | None
    eof_sent: bool
    expect_continuation_frame: bool
    @property
    def max_message_size(self) -> int | None: ...
    def __init__(self, *, max_size: int | None = ..., logger: Any = ...) -> None: ...
    @property
    def state(self) -> State: ...
    @state.setter
    def state(self, value: State) -> None: ...
    @property
    def id(self) -> Any: ...
    @property
    def id_text(self) -> str:
        """``str(self.id)``, without the ``UUID`` object if it was not made yet."""
    @property
    def current_size(self) -> int | None: ...
    @property
    def close_code(self) -> int | None: ...
    def start(self) -> None:
        """The upgrade was answered: OPEN, frames are read."""
    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the network."""
    def receive_eof(self) -> None:
        """The end of the data stream (idempotent)."""
    def send_text(self, data: bytes, fin: bool = ...) -> None:
        """A text frame."""
    def send_binary(self, data: bytes, fin: bool = ...) -> None:
        """A binary frame."""
    def send_ping(self, data: bytes) -> None:
        """A ping frame."""
    def send_pong(self, data: bytes) -> None:
        """A pong frame."""
    def send_close(self, code: int | None = ..., reason: str = ...) -> None:
        """Start the closing handshake."""
    def fail(self, code: int, reason: str = ...) -> None:
        """Fail the connection (RFC 6455 7.1.7)."""
    def events_received(self) -> list[Frame]:
        """Events since the last call."""
    def data_to_send(self) -> list[bytes]:
        """Bytes to write since the last call (b"": end the stream)."""
    def close_expected(self) -> bool:
        """Whether the TCP connection is expected to end soon."""
