# cython: language_level=3
"""Compiled fan-out core: frame once, cork per loop tick, write to many sockets.

Semantics, bytes on the wire and counters are identical to the pure-Python
reference :mod:`rtserver.fanout_reference` (read its module docstring for the
contract); this module removes the Python work per delivery:

* ``send_many`` frames the payload once (one allocation + one memcpy) and then,
  per target, only does C-level work: a type check, a few field updates and a
  list append when the target is not yet queued in this tick. Lists and sets
  are iterated with the C API (``PyList_GET_ITEM`` / ``_PySet_NextEntry``), any
  other iterable through ``tp_iternext``.
* ONE ``loop.call_soon(flush)`` per tick for the whole :class:`Fanout`.
* ``flush`` checks each queued connection once (marked closed, transport
  closing, websockets state OPEN, outbound limit, fragmented send in progress)
  and, when the transport's own write buffer is empty, writes straight to the
  socket with libc ``send()`` (one frame) or ``sendmsg()`` (up to
  :data:`IOV_BATCH` frames, no join) with ``MSG_DONTWAIT | MSG_NOSIGNAL``. A
  partial write or EAGAIN hands the remainder to ``transport.write`` so order
  is kept; any other errno is counted (``send_errors``) and the data is handed
  to ``transport.write``, which meets the same error and closes the connection
  the ordinary way (websockets notices); the sink is then marked closed.

Compiler directives are set per function (see ``setup.py``). Build with
``python setup.py build_ext --inplace``; ``RTSERVER_ANNOTATE=1`` writes the
annotated HTML.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append, PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memcpy, memset

from websockets.protocol import Side, State


cdef extern from "Python.h":
    bint PySet_CheckExact(object o)

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t c_send "send" (int fd, const void* buf, size_t n, int flags)
    ssize_t c_sendmsg "sendmsg" (int fd, const msghdr* msg, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


__all__ = ["IOV_BATCH", "STATS_KEYS", "Fanout", "Sink", "frame_text"]

cdef enum:
    _IOV_BATCH = 64

#: At most this many frames are written with one ``sendmsg``; more pending
#: frames for one connection are joined into one buffer first (IOV_MAX is 1024).
IOV_BATCH = _IOV_BATCH

#: Keys of :meth:`Fanout.stats`, in a fixed order (same as the reference).
STATS_KEYS = (
    "deliveries",
    "frames_encoded",
    "frames_written",
    "writes",
    "bytes_written",
    "coalesced",
    "direct_sends",
    "partial_writes",
    "transport_writes",
    "send_errors",
    "skipped_not_open",
    "skipped_fragmented",
    "slow_consumers",
    "dropped_slow",
    "compressed",
)

cdef object _OPEN = State.OPEN
# An empty ping, as the server sends it (unmasked, FIN): the heartbeat's keepalive.
cdef bytes _PING = b"\x89\x00"
cdef int _SEND_FLAGS = MSG_DONTWAIT | MSG_NOSIGNAL


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef bytes _frame(object payload):
    """One unmasked RFC 6455 text frame (FIN set) carrying ``payload``."""
    cdef bytes data
    if PyBytes_CheckExact(payload):
        data = <bytes>payload
    else:
        data = bytes(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t h
    cdef unsigned long long un = <unsigned long long>n
    cdef int i
    if n < 126:
        h = 2
    elif n < 65536:
        h = 4
    else:
        h = 10
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = 0x81
    if h == 2:
        p[1] = <unsigned char>n
    elif h == 4:
        p[1] = 126
        p[2] = <unsigned char>((un >> 8) & 0xFF)
        p[3] = <unsigned char>(un & 0xFF)
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = <unsigned char>((un >> (56 - 8 * i)) & 0xFF)
    if n:
        memcpy(p + h, PyBytes_AS_STRING(data), <size_t>n)
    return out


def frame_text(payload):
    """Return one unmasked RFC 6455 text frame with FIN set carrying ``payload``."""
    return _frame(payload)


def direct_fd(transport):
    """File descriptor the core may ``send()`` to directly, or -1 (TLS, no socket)."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    return int(sock.fileno())


cdef class Sink:
    """The write side of one websockets connection, owned by the hub."""

    def __init__(self, connection, owner):
        if connection.protocol.side is not Side.SERVER:
            raise ValueError(
                "a fan-out Sink needs a server-side websockets connection (server frames are "
                "unmasked). Required action: create Sinks only for accepted connections."
            )
        transport = connection.transport
        self.connection = connection
        self.owner = owner
        self.protocol = connection.protocol
        self.transport = transport
        self.compressed = bool(connection.protocol.extensions)
        self.closed = False
        self.fd = direct_fd(transport)
        self._get_write_buffer_size = transport.get_write_buffer_size
        self._is_closing = transport.is_closing
        self._write = transport.write
        self.first = None
        self.more = None
        self.npending = 0
        self.pending_bytes = 0
        self.queued = False

    def __repr__(self):
        return (f"<Sink fd={self.fd} compressed={self.compressed} closed={self.closed} "
                f"pending={self.npending} owner={self.owner!r}>")


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bytes _join(object first, list more):
    """``first`` followed by the frames in ``more`` as one bytes object."""
    cdef Py_ssize_t total = PyBytes_GET_SIZE(first)
    cdef Py_ssize_t i, k, off
    cdef object item
    for i in range(PyList_GET_SIZE(more)):
        total += PyBytes_GET_SIZE(<object>PyList_GET_ITEM(more, i))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    k = PyBytes_GET_SIZE(first)
    memcpy(p, PyBytes_AS_STRING(first), <size_t>k)
    off = k
    for i in range(PyList_GET_SIZE(more)):
        item = <object>PyList_GET_ITEM(more, i)
        k = PyBytes_GET_SIZE(item)
        memcpy(p + off, PyBytes_AS_STRING(item), <size_t>k)
        off += k
    return out


cdef class Fanout:
    """Frame once, cork per loop tick, write to many connections."""

    def __init__(self, loop, Py_ssize_t outbound_limit, on_slow_consumer):
        if outbound_limit <= 0:
            raise ValueError(
                f"outbound_limit must be a positive number of bytes, got {outbound_limit}. "
                "Required action: set a positive outbound buffer limit in the configuration."
            )
        self._loop = loop
        self._call_soon = loop.call_soon
        self._flush_cb = self.flush
        self._limit = outbound_limit
        self._on_slow = on_slow_consumer
        self._dirty = []
        self._scheduled = False

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _queue(self, Sink sink, bytes frame, object payload) except -1:
        self.n_deliveries += 1
        if sink.closed:
            self.n_skipped_not_open += 1
            return 0
        sink.pending_bytes += PyBytes_GET_SIZE(frame)
        cdef object item
        if sink.pending_bytes > self._limit:
            # Over the limit within this tick: do not store, report at flush.
            self.n_dropped_slow += 1
        else:
            if sink.compressed:
                self.n_compressed += 1
                item = payload
            else:
                item = frame
            if sink.npending == 0:
                sink.first = item
            elif sink.npending == 1:
                sink.more = [item]
            else:
                PyList_Append(sink.more, item)
            sink.npending += 1
        if not sink.queued:
            sink.queued = True
            PyList_Append(self._dirty, sink)
        return 0

    cdef int _schedule(self) except -1:
        if not self._scheduled and PyList_GET_SIZE(self._dirty):
            self._scheduled = True
            self._call_soon(self._flush_cb)
        return 0

    def send(self, Sink sink not None, payload):
        """Queue ``payload`` as one text frame for ``sink``."""
        cdef bytes frame = _frame(payload)
        self.n_frames_encoded += 1
        self._queue(sink, frame, payload)
        self._schedule()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def send_many(self, sinks, payload, Sink exclude=None):
        """Queue ``payload`` framed once for every sink but ``exclude``; return the count."""
        cdef bytes frame = _frame(payload)
        self.n_frames_encoded += 1
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t i
        cdef object obj
        cdef set sset
        if PyList_CheckExact(sinks):
            for i in range(PyList_GET_SIZE(sinks)):
                obj = <object>PyList_GET_ITEM(sinks, i)
                if obj is exclude:
                    continue
                self._queue(<Sink?>obj, frame, payload)
                n += 1
        elif PySet_CheckExact(sinks):
            sset = <set>sinks
            for obj in sset:
                if obj is exclude:
                    continue
                self._queue(<Sink?>obj, frame, payload)
                n += 1
        else:
            for obj in sinks:
                if obj is exclude:
                    continue
                self._queue(<Sink?>obj, frame, payload)
                n += 1
        self._schedule()
        return n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def ping_and_send_many(self, list sinks not None, payload):
        """Queue an empty ping followed by ``payload`` as one text frame (both framed once)
        for every sink; return the count. Only for uncompressed sinks (a compressed
        sink's frames go through its protocol): ValueError otherwise."""
        cdef bytes frame = _PING + _frame(payload)
        self.n_frames_encoded += 1
        cdef Py_ssize_t i
        cdef Sink sink
        for i in range(PyList_GET_SIZE(sinks)):
            sink = <Sink?>PyList_GET_ITEM(sinks, i)
            if sink.compressed:
                raise ValueError(
                    "ping_and_send_many got a compressed sink. Required action: ping it "
                    "through its protocol and send the payload with send_many")
            self._queue(sink, frame, payload)
        self._schedule()
        return PyList_GET_SIZE(sinks)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def flush(self):
        """Write every pending frame now, one write per connection."""
        self._scheduled = False
        cdef list dirty = self._dirty
        self._dirty = []
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t count = PyList_GET_SIZE(dirty)
        try:
            while i < count:
                self._flush_sink(<Sink>PyList_GET_ITEM(dirty, i))
                i += 1
        except BaseException:
            # Keep the not yet flushed connections queued (never lose them).
            self._dirty[:0] = dirty[i + 1:]
            self._schedule()
            raise

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _flush_sink(self, Sink sink) except -1:
        cdef object first = sink.first
        cdef list more = sink.more
        cdef Py_ssize_t n = sink.npending
        cdef Py_ssize_t size = sink.pending_bytes
        cdef Py_ssize_t tbuf, buffered, i
        sink.first = None
        sink.more = None
        sink.npending = 0
        sink.pending_bytes = 0
        sink.queued = False
        if sink.closed or sink._is_closing() or sink.protocol.state is not _OPEN:
            self.n_skipped_not_open += n
            return 0
        tbuf = sink._get_write_buffer_size()
        buffered = size + tbuf
        if buffered > self._limit:
            sink.closed = True
            self.n_slow_consumers += 1
            self.n_dropped_slow += n
            self._on_slow(sink, buffered)
            return 0
        conn = sink.connection
        if conn.send_in_progress is not None:
            self.n_skipped_fragmented += n
            return 0
        self.n_frames_written += n
        self.n_coalesced += n - 1
        self.n_writes += 1
        if sink.compressed:
            protocol = sink.protocol
            protocol.send_text(first)
            if more is not None:
                for i in range(PyList_GET_SIZE(more)):
                    protocol.send_text(<object>PyList_GET_ITEM(more, i))
            conn.send_data()
            return 0
        self.n_bytes_written += size
        return self._write_frames(sink, first, more, n, size, tbuf)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _write_frames(self, Sink sink, object first, list more, Py_ssize_t n,
                           Py_ssize_t size, Py_ssize_t tbuf) except -1:
        cdef bytes data
        cdef iovec iov[_IOV_BATCH]
        cdef msghdr msg
        cdef ssize_t sent
        cdef int err
        cdef Py_ssize_t i
        cdef object item
        if sink.fd < 0 or tbuf != 0:
            self.n_transport_writes += 1
            sink._write(first if n == 1 else _join(first, more))
            return 0
        if n == 1 or n > _IOV_BATCH:
            data = <bytes>first if n == 1 else _join(first, more)
            sent = c_send(sink.fd, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data),
                          _SEND_FLAGS)
        else:
            data = None
            iov[0].iov_base = PyBytes_AS_STRING(first)
            iov[0].iov_len = <size_t>PyBytes_GET_SIZE(first)
            for i in range(n - 1):
                item = <object>PyList_GET_ITEM(more, i)
                iov[i + 1].iov_base = PyBytes_AS_STRING(item)
                iov[i + 1].iov_len = <size_t>PyBytes_GET_SIZE(item)
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = <size_t>n
            sent = c_sendmsg(sink.fd, &msg, _SEND_FLAGS)
        if sent < 0:
            err = errno
            if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
                sent = 0
            else:
                self.n_send_errors += 1
                sink._write(data if data is not None else _join(first, more))
                if sink._is_closing():
                    sink.closed = True
                return 0
        self.n_direct_sends += 1
        if sent < size:
            self.n_partial_writes += 1
            if data is None:
                data = _join(first, more)
            sink._write(PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + sent, size - sent))
        return 0

    def stats(self):
        """Counters since start (a copy)."""
        return {
            "deliveries": self.n_deliveries,
            "frames_encoded": self.n_frames_encoded,
            "frames_written": self.n_frames_written,
            "writes": self.n_writes,
            "bytes_written": self.n_bytes_written,
            "coalesced": self.n_coalesced,
            "direct_sends": self.n_direct_sends,
            "partial_writes": self.n_partial_writes,
            "transport_writes": self.n_transport_writes,
            "send_errors": self.n_send_errors,
            "skipped_not_open": self.n_skipped_not_open,
            "skipped_fragmented": self.n_skipped_fragmented,
            "slow_consumers": self.n_slow_consumers,
            "dropped_slow": self.n_dropped_slow,
            "compressed": self.n_compressed,
        }
