# cython: language_level=3
"""Compiled WebSocket frame protocol of an open server connection (RFC 6455, no extension).

websockets' Sans-I/O ``ServerProtocol`` reads frames with a chain of generators (a
``StreamReader`` and ``Frame.parse`` per frame) and builds every frame it sends with
``io.BytesIO`` and ``struct``; it also makes a ``uuid4`` and two generators per
connection before any byte arrives. Measured in a 10,000-connection storm, its
construction, frame parsing and sending were about a tenth of a worker's CPU
(docs/benchmarks.md, "A compiled frame protocol"). :class:`FrameProtocol` does the
same work for the common connection, the one rtserver/ws_handshake.py answered
without websockets' parser when compression is off, with C-level parsing and
unmasking and no object per frame beyond the event.

It is a drop-in for the part of ``ServerProtocol`` the connection layer
(rtserver/ws_server.py), the fan-out core and the heartbeat use once the upgrade
is accepted: the same states (``websockets.protocol.State``), events
(``websockets.frames.Frame``), bytes out, close codes and reasons, ``close_rcvd``
/ ``close_sent`` / ``close_rcvd_then_sent``, ``parser_exc``, and log lines.
Everything before the upgrade (parsing a request websockets must read, refusals,
``accept``) stays websockets': the connection layer swaps in a ``ServerProtocol``
for those. tests/server/test_wsframes.py feeds this class and websockets' the same
byte streams (valid, invalid, split at every byte) and compares what they do.

Compiler directives are set per function (see ``setup.py``).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

import logging
import os
import uuid

from websockets.exceptions import InvalidMessage, InvalidState, PayloadTooBig, ProtocolError
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import SEND_EOF, Side, State

__all__ = ["FrameProtocol"]

cdef object _CONNECTING = State.CONNECTING
cdef object _OPEN = State.OPEN
cdef object _CLOSING = State.CLOSING
cdef object _CLOSED = State.CLOSED
cdef object _SERVER = Side.SERVER
cdef object _OPCODES = {int(op): op for op in Opcode}
cdef object _DEBUG = logging.DEBUG

cdef enum:
    OP_CONT = 0
    OP_TEXT = 1
    OP_BINARY = 2
    OP_CLOSE = 8
    OP_PING = 9
    OP_PONG = 10

cdef enum:
    MODE_CONNECTING = 0
    MODE_FRAMES = 1
    MODE_DISCARD = 2
    MODE_ENDED = 3


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bytes _unmask(const unsigned char* src, Py_ssize_t n, const unsigned char* key):
    """``src[:n]`` XOR the 4-byte ``key``, 8 bytes at a time."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    cdef unsigned char k8[8]
    cdef uint64_t m64, w
    cdef Py_ssize_t i = 0
    k8[0] = key[0]; k8[1] = key[1]; k8[2] = key[2]; k8[3] = key[3]
    k8[4] = key[0]; k8[5] = key[1]; k8[6] = key[2]; k8[7] = key[3]
    memcpy(&m64, k8, 8)
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= m64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ key[i & 3]
        i += 1
    return out


cdef const char* _HEX = b"0123456789abcdef"


@cython.boundscheck(False)
@cython.wraparound(False)
cdef str _uuid4_text(bytes raw):
    """The text of a version-4 UUID made of the 16 bytes ``raw`` (what
    ``str(uuid.UUID(bytes=raw, version=4))`` gives), without the ``UUID`` object."""
    if PyBytes_GET_SIZE(raw) != 16:
        raise ValueError("a uuid4 is made of 16 random bytes")
    cdef const unsigned char* r = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef char out[36]
    cdef int i, j = 0
    cdef unsigned char b
    for i in range(16):
        b = r[i]
        if i == 6:
            b = (b & 0x0F) | 0x40  # version 4
        elif i == 8:
            b = (b & 0x3F) | 0x80  # RFC 4122 variant
        if i == 4 or i == 6 or i == 8 or i == 10:
            out[j] = 45  # "-"
            j += 1
        out[j] = _HEX[b >> 4]
        out[j + 1] = _HEX[b & 15]
        j += 2
    return PyUnicode_DecodeASCII(out, 36, NULL)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bytes _server_frame(int opcode, bytes data):
    """An unmasked frame with FIN set (a server's frame)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t head = 2 if n < 126 else (4 if n < 65536 else 10)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, head + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    cdef int i
    p[0] = 0x80 | opcode
    if n < 126:
        p[1] = <unsigned char>n
    elif n < 65536:
        p[1] = 126
        p[2] = (n >> 8) & 0xFF
        p[3] = n & 0xFF
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = (<uint64_t>n >> (56 - 8 * i)) & 0xFF
    if n:
        memcpy(p + head, PyBytes_AS_STRING(data), n)
    return out


cdef class FrameProtocol:
    """The frame protocol of one server connection whose upgrade rtserver answered.

    Starts ``CONNECTING`` and reads nothing until :meth:`start` (the ``101`` went
    out); then the API of websockets' ``ServerProtocol``: :meth:`receive_data`,
    :meth:`receive_eof`, :meth:`events_received`, :meth:`data_to_send`,
    :meth:`close_expected`, :meth:`send_text`, :meth:`send_binary`,
    :meth:`send_ping`, :meth:`send_pong`, :meth:`send_close`, :meth:`fail`.
    """

    side = _SERVER
    #: No extension is ever negotiated on this protocol (compression is off).
    extensions = ()
    subprotocol = None
    origin = None

    def __cinit__(self, *, max_size=2 ** 20, logger=None):
        if logger is None:
            logger = logging.getLogger("websockets.server")
        self.logger = logger
        self.debug = logger.isEnabledFor(_DEBUG)
        self._set_state(_CONNECTING)
        self.max_message_size = max_size
        self._max = -1 if max_size is None else max_size
        self._current = -1
        self._buf = b""
        self._eof = False
        self._mode = MODE_CONNECTING
        # Made on the first event or write (None: none pending): no two lists for the
        # collector to walk per idle connection.
        self.events = None
        self.writes = None
        self.eof_sent = False
        self.expect_continuation_frame = False

    # ------------------------------------------------------------ attributes

    @property
    def state(self):
        """``websockets.protocol.State`` of the connection."""
        return self._state

    @state.setter
    def state(self, value):
        self._set_state(value)

    cdef int _set_state(self, object state) except -1:
        if self.debug:
            self.logger.debug("= connection is %s", state.name)
        self._state = state
        return 0

    @property
    def id(self):
        """A unique identifier (a ``uuid4``, made on first use of it or of
        :attr:`id_text`)."""
        if self._id is None:
            self._id = uuid.UUID(self._id_text) if self._id_text is not None else uuid.uuid4()
        return self._id

    @property
    def id_text(self):
        """``str(self.id)``, without making the ``UUID`` object when it was not made yet
        (the connection layer names the connection with it)."""
        if self._id_text is None:
            self._id_text = (str(self._id) if self._id is not None
                             else _uuid4_text(os.urandom(16)))
        return self._id_text

    @property
    def current_size(self):
        """Bytes received of the fragmented message in progress (None: none)."""
        return None if self._current < 0 else self._current

    @property
    def close_code(self):
        """The close code received (None until CLOSED; 1006 without a close frame)."""
        if self._state is not _CLOSED:
            return None
        if self.close_rcvd is None:
            return CloseCode.ABNORMAL_CLOSURE
        return self.close_rcvd.code

    def start(self):
        """The upgrade was answered: the connection is OPEN and frames are read."""
        if self._mode != MODE_CONNECTING:
            raise AssertionError("start() once, before any frame")
        self._set_state(_OPEN)
        self._mode = MODE_FRAMES

    # ------------------------------------------------------------ receiving

    def receive_data(self, data):
        """Bytes from the network: parse what is complete (then :meth:`data_to_send`,
        :meth:`events_received`). Raises EOFError after :meth:`receive_eof`."""
        if self._eof:
            raise EOFError("stream ended")
        if self._mode == MODE_CONNECTING:
            raise AssertionError("FrameProtocol reads frames only: call start() first")
        if type(data) is not bytes:
            data = bytes(data)
        if self._mode == MODE_FRAMES:
            if PyBytes_GET_SIZE(self._buf):
                self._buf = self._buf + data
            else:
                self._buf = data
            self._parse()
        # MODE_DISCARD: incoming data is dropped (websockets' discard()).

    def receive_eof(self):
        """The end of the data stream (idempotent)."""
        if self._eof:
            return
        self._eof = True
        if self._mode == MODE_CONNECTING:
            # No request was read: websockets' answer to a connection ended before it.
            self.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
            self.handshake_exc.__cause__ = EOFError("stream ends after 0 bytes, before end of line")
            self._send_eof()
            self._mode = MODE_DISCARD
            self._discard()
        elif self._mode == MODE_FRAMES:
            self._parse()
        elif self._mode == MODE_DISCARD:
            self._discard()

    cdef int _parse(self) except -1:
        """Frames until more bytes are needed; a failure as websockets' parse() maps it."""
        try:
            self._parse_frames()
        except ProtocolError as exc:
            self.fail(CloseCode.PROTOCOL_ERROR, str(exc))
            self.parser_exc = exc
        except EOFError as exc:
            self.fail(CloseCode.ABNORMAL_CLOSURE, str(exc))
            self.parser_exc = exc
        except UnicodeDecodeError as exc:
            self.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self.parser_exc = exc
        except PayloadTooBig as exc:
            exc.set_current_size(None if self._current < 0 else self._current)
            self.fail(CloseCode.MESSAGE_TOO_BIG, str(exc))
            self.parser_exc = exc
        except Exception as exc:  # noqa: BLE001 - websockets' mapping: logged, 1011
            self.logger.error("parser failed", exc_info=True)
            self.fail(CloseCode.INTERNAL_ERROR)
            self.parser_exc = exc
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _parse_frames(self) except -1:
        cdef bytes buf
        cdef const unsigned char* p
        cdef Py_ssize_t size, pos, avail, head
        cdef unsigned long long length
        cdef long long limit
        cdef int opcode, i
        cdef bint fin
        cdef bytes payload
        while self._mode == MODE_FRAMES:
            buf = self._buf
            size = PyBytes_GET_SIZE(buf)
            pos = 0
            p = <const unsigned char*>PyBytes_AS_STRING(buf)
            avail = size
            if avail == 0:
                if self._eof:
                    if self.debug:
                        self.logger.debug("< EOF")
                    raise EOFError("unexpected end of stream")
                return 0
            # The checks websockets makes as each part of a frame arrives, in its order.
            if avail < 2:
                return self._incomplete(avail, 2)
            opcode = p[0] & 0x0F
            if not (opcode <= OP_BINARY or OP_CLOSE <= opcode <= OP_PONG):
                raise ProtocolError("invalid opcode")
            if not (p[1] & 0x80):
                raise ProtocolError("incorrect masking")
            length = p[1] & 0x7F
            head = 2
            if length == 126:
                if avail < 4:
                    return self._incomplete(avail - 2, 2)
                length = (<unsigned long long>p[2] << 8) | p[3]
                head = 4
            elif length == 127:
                if avail < 10:
                    return self._incomplete(avail - 2, 8)
                length = 0
                for i in range(8):
                    length = (length << 8) | p[2 + i]
                head = 10
            if self._max >= 0:
                limit = self._max - (self._current if self._current >= 0 else 0)
                if <long long>length > limit or length > <unsigned long long>0x7FFFFFFFFFFFFFFF:
                    raise PayloadTooBig(length, limit)
            if avail < head + 4:
                return self._incomplete(avail - head, 4)
            if <unsigned long long>(avail - head - 4) < length:
                return self._incomplete(avail - head - 4, <Py_ssize_t>length)
            fin = (p[0] & 0x80) != 0
            payload = _unmask(p + head + 4, <Py_ssize_t>length, p + head)
            pos = head + 4 + <Py_ssize_t>length
            self._buf = buf[pos:] if pos < size else b""
            if p[0] & 0x70:
                raise ProtocolError("reserved bits must be 0")
            if opcode >= OP_CLOSE:
                if length > 125:
                    raise ProtocolError("control frame too long")
                if not fin:
                    raise ProtocolError("fragmented control frame")
            self._recv_frame(opcode, payload, fin)
        return 0

    cdef int _incomplete(self, Py_ssize_t have, Py_ssize_t want) except -1:
        if self._eof:
            raise EOFError(f"stream ends after {have} bytes, expected {want} bytes")
        return 0

    cdef int _recv_frame(self, int opcode, bytes data, bint fin) except -1:
        """websockets' recv_frame(): fragmentation rules, ping, close; then the event."""
        cdef object frame = Frame(_OPCODES[opcode], data, fin)
        if self.debug:
            self.logger.debug("< %s", frame)
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._current >= 0:
                raise ProtocolError("expected a continuation frame")
            if not fin:
                self._current = PyBytes_GET_SIZE(data)
        elif opcode == OP_CONT:
            if self._current < 0:
                raise ProtocolError("unexpected continuation frame")
            if fin:
                self._current = -1
            else:
                self._current += PyBytes_GET_SIZE(data)
        elif opcode == OP_PING:
            self._send_frame(OP_PONG, data)
        elif opcode == OP_CLOSE:
            self.close_rcvd = Close.parse(data)
            if self._state is _CLOSING:
                self.close_rcvd_then_sent = False
            if self._current >= 0:
                raise ProtocolError("incomplete fragmented message")
            if self._state is _OPEN:
                # The received payload is echoed (an empty one too).
                self._send_frame(OP_CLOSE, data)
                self.close_sent = self.close_rcvd
                self.close_rcvd_then_sent = True
                self._set_state(_CLOSING)
            # A server closes the TCP connection right after the closing handshake.
            self._send_eof()
            self._mode = MODE_DISCARD
            self._discard()
        if self.events is None:
            self.events = [frame]
        else:
            PyList_Append(self.events, frame)
        return 0

    cdef int _discard(self) except -1:
        """Drop what arrives; at EOF the connection is CLOSED."""
        self._buf = b""
        if self._eof and self._mode == MODE_DISCARD:
            self._mode = MODE_ENDED
            self._set_state(_CLOSED)
            self.logger.info("connection closed")
        return 0

    # ------------------------------------------------------------ sending

    cdef int _send_frame(self, int opcode, bytes data) except -1:
        if opcode >= OP_CLOSE and PyBytes_GET_SIZE(data) > 125:
            raise ProtocolError("control frame too long")
        if self.debug:
            self.logger.debug("> %s", Frame(_OPCODES[opcode], data))
        if self.writes is None:
            self.writes = [_server_frame(opcode, data)]
        else:
            PyList_Append(self.writes, _server_frame(opcode, data))
        return 0

    cdef int _send_eof(self) except -1:
        assert not self.eof_sent
        self.eof_sent = True
        if self.debug:
            self.logger.debug("> EOF")
        if self.writes is None:
            self.writes = [SEND_EOF]
        else:
            PyList_Append(self.writes, SEND_EOF)
        return 0

    def _check_open(self):
        if self._state is not _OPEN:
            raise InvalidState(f"connection is {self._state.name.lower()}")

    def _send_message(self, int opcode, data, fin):
        """A whole text or binary message in one frame (the server never fragments one:
        the fan-out core frames whole messages, compression stays on websockets')."""
        if self.expect_continuation_frame:
            raise ProtocolError("expected a continuation frame")
        self._check_open()
        if not fin:
            raise NotImplementedError("FrameProtocol sends whole messages only")
        self._send_frame(opcode, bytes(data))

    def _send_control(self, int opcode, data):
        """A ping or pong (OPEN or CLOSING)."""
        if self._state is not _OPEN and self._state is not _CLOSING:
            raise InvalidState(f"connection is {self._state.name.lower()}")
        self._send_frame(opcode, bytes(data))

    def send_text(self, data, fin=True):
        """A text frame (whole messages only)."""
        self._send_message(OP_TEXT, data, fin)

    def send_binary(self, data, fin=True):
        """A binary frame (whole messages only)."""
        self._send_message(OP_BINARY, data, fin)

    def send_ping(self, data):
        """A ping frame (OPEN or CLOSING)."""
        self._send_control(OP_PING, data)

    def send_pong(self, data):
        """A pong frame (OPEN or CLOSING)."""
        self._send_control(OP_PONG, data)

    def send_close(self, code=None, reason=""):
        """Start the closing handshake with ``code`` and ``reason``."""
        self._check_open()
        if code is None:
            if reason != "":
                raise ProtocolError("cannot send a reason without a code")
            close = Close(CloseCode.NO_STATUS_RCVD, "")
            data = b""
        else:
            close = Close(code, reason)
            data = close.serialize()
        self._send_frame(OP_CLOSE, data)
        self.close_sent = close
        self._set_state(_CLOSING)

    def fail(self, code, reason=""):
        """Fail the connection (RFC 6455 7.1.7): a close frame when OPEN (not for 1006),
        the end of the TCP stream, and nothing more is read."""
        if self._state is _OPEN:
            if code != CloseCode.ABNORMAL_CLOSURE:
                close = Close(code, reason)
                data = close.serialize()
                self._send_frame(OP_CLOSE, data)
                self.close_sent = close
                if self.close_rcvd is not None:
                    self.close_rcvd_then_sent = True
                self._set_state(_CLOSING)
        if not self.eof_sent:
            self._send_eof()
        self._mode = MODE_DISCARD
        self._discard()

    def events_received(self):
        """The events (``Frame``) of the data received since the last call."""
        events = self.events
        if events is None:
            return []
        self.events = None
        return events

    def data_to_send(self):
        """The bytes to write since the last call (``b""``: end the TCP stream)."""
        writes = self.writes
        if writes is None:
            return []
        self.writes = None
        return writes

    def close_expected(self):
        """Whether the TCP connection is expected to end soon."""
        state = self._state
        if state is _OPEN:
            return False
        if state is _CLOSING:
            return True
        if state is _CLOSED:
            return False
        return self.eof_sent
