# Declarations of the compiled WebSocket frame protocol (``rtserver/_wsframes.pyx``).
# Python callers use the ``_wsframes.pyi`` stub; the behaviour it must keep is
# websockets' ``ServerProtocol`` once the connection is open (the tests in
# tests/server/test_wsframes.py feed both the same bytes and compare).

cdef str _uuid4_text(bytes raw)


cdef class FrameProtocol:
    cdef object _state
    cdef public object logger
    cdef public bint debug
    cdef public object close_rcvd
    cdef public object close_sent
    cdef public object close_rcvd_then_sent
    cdef public object handshake_exc
    cdef public object parser_exc
    cdef public bint eof_sent
    cdef public bint expect_continuation_frame
    cdef readonly object max_message_size
    cdef object _id
    cdef object _id_text
    # Largest payload of one message (-1: no limit), and the bytes received so far of a
    # fragmented message (-1: none in progress).
    cdef Py_ssize_t _max
    cdef Py_ssize_t _current
    # Received bytes not parsed yet (a partial frame), b"" most of the time.
    cdef bytes _buf
    # receive_eof() was called.
    cdef bint _eof
    # 0: before start() (nothing read), 1: reading frames, 2: discarding (after a close
    # frame or a failure), 3: ended (EOF seen while discarding).
    cdef int _mode
    # Where an incomplete frame stopped: bytes available to the read that waits, and
    # the bytes it waits for (websockets' "stream ends after P bytes, expected N").
    cdef Py_ssize_t _need_have
    cdef Py_ssize_t _need_want
    cdef list events
    cdef list writes

    cdef int _parse(self) except -1
    cdef int _parse_frames(self) except -1
    cdef int _incomplete(self, Py_ssize_t have, Py_ssize_t want) except -1
    cdef int _recv_frame(self, int opcode, bytes data, bint fin) except -1
    cdef int _send_frame(self, int opcode, bytes data) except -1
    cdef int _send_eof(self) except -1
    cdef int _discard(self) except -1
    cdef int _set_state(self, object state) except -1
