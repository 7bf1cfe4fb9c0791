# Declarations of the compiled fan-out core for other Cython modules
# (``from rtserver._fanout cimport Sink, Fanout``). Python callers use the
# ``_fanout.pyi`` stub; semantics are documented in ``_fanout.pyx`` and in the
# pure-Python reference ``rtserver/fanout_reference.py``.

cdef class Sink:
    cdef readonly object connection
    cdef public object owner
    cdef public bint compressed
    cdef public bint closed
    # Socket file descriptor for direct send(), -1 when not allowed (TLS).
    cdef readonly int fd
    cdef object protocol
    cdef object transport
    cdef object _get_write_buffer_size
    cdef object _is_closing
    cdef object _write
    # Pending items of this tick: ``first`` alone, or ``first`` + ``more``.
    cdef object first
    cdef list more
    cdef Py_ssize_t npending
    cdef readonly Py_ssize_t pending_bytes
    cdef bint queued


cdef class Fanout:
    cdef object _loop
    cdef object _call_soon
    cdef object _flush_cb
    cdef Py_ssize_t _limit
    cdef object _on_slow
    cdef list _dirty
    cdef bint _scheduled

    cdef unsigned long long n_deliveries
    cdef unsigned long long n_frames_encoded
    cdef unsigned long long n_frames_written
    cdef unsigned long long n_writes
    cdef unsigned long long n_bytes_written
    cdef unsigned long long n_coalesced
    cdef unsigned long long n_direct_sends
    cdef unsigned long long n_partial_writes
    cdef unsigned long long n_transport_writes
    cdef unsigned long long n_send_errors
    cdef unsigned long long n_skipped_not_open
    cdef unsigned long long n_skipped_fragmented
    cdef unsigned long long n_slow_consumers
    cdef unsigned long long n_dropped_slow
    cdef unsigned long long n_compressed

    cdef int _queue(self, Sink sink, bytes frame, object payload) except -1
    cdef int _schedule(self) except -1
    cdef int _flush_sink(self, Sink sink) except -1
    cdef int _write_frames(self, Sink sink, object first, list more, Py_ssize_t n,
                          Py_ssize_t size, Py_ssize_t tbuf) except -1
