"""Fan-out core against real websockets clients on loopback (both implementations).

The server in :class:`Harness` wraps every accepted connection in a ``Sink`` of
the implementation under test (``impl`` fixture: the pure-Python reference or
the compiled core) and keeps it by the request path the client used, so a test
knows which server-side sink belongs to which client.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from types import ModuleType
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rtserver import fanout_reference
from rtserver.fanout import FanoutKind, load_fanout

#: Upper bound for every wait in these tests (seconds).
WAIT = 10.0


class Harness:
    """A websockets server whose connections are registered as sinks of one Fanout."""

    def __init__(
        self,
        impl: ModuleType,
        limit: int = 8 << 20,
        compression: str | None = None,
        sndbuf: int | None = None,
    ) -> None:
        self.impl = impl
        self.limit = limit
        self.compression = compression
        self.sndbuf = sndbuf
        self.sinks: dict[str, Any] = {}
        self.slow: list[tuple[Any, int]] = []
        self.tasks: set[asyncio.Future[None]] = set()
        self._arrived = asyncio.Condition()
        self.server: Server | None = None
        self.port = 0
        self.fanout: Any = None
        self.clients: list[ClientConnection] = []

    async def __aenter__(self) -> Harness:
        loop = asyncio.get_running_loop()
        self.fanout = self.impl.Fanout(loop, self.limit, self._on_slow)
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            compression=self.compression,
            ping_interval=None,
            max_size=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            client.transport.abort()
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), WAIT)

    def _on_slow(self, sink: Any, buffered: int) -> None:
        # What the lead's hub does: log, then close with 1013 (never inside the core).
        self.slow.append((sink, buffered))
        task = asyncio.ensure_future(sink.connection.close(1013, "slow consumer"))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handler(self, ws: ServerConnection) -> None:
        if self.sndbuf is not None:
            ws.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf
            )
        assert ws.request is not None
        sink = self.impl.Sink(ws, ws.request.path)
        async with self._arrived:
            self.sinks[ws.request.path] = sink
            self._arrived.notify_all()
        await ws.wait_closed()

    async def sink(self, path: str) -> Any:
        """The server-side sink of the client that connected with ``path``."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: path in self.sinks), WAIT)
        return self.sinks[path]

    async def connect(self, path: str, **kwargs: Any) -> tuple[ClientConnection, Any]:
        """Connect a websockets client with ``path``; return it and its server-side sink."""
        kwargs.setdefault("compression", None)
        kwargs.setdefault("max_size", None)
        client = await connect(f"ws://127.0.0.1:{self.port}{path}", ping_interval=None, **kwargs)
        self.clients.append(client)
        return client, await self.sink(path)

    async def raw(self, path: str) -> tuple[socket.socket, Any]:
        """A raw TCP client that did the opening handshake by hand; return it and its sink."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = b""
        for _ in range(100):
            if b"\r\n\r\n" in head:
                break
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT)
            assert chunk, "server closed during the handshake"
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        assert rest == b"", "no data may follow the handshake response yet"
        return sock, await self.sink(path)


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes from a non-blocking raw socket (bounded in time)."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    async with asyncio.timeout(WAIT):
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, n - len(buf))
            assert chunk, f"connection closed after {len(buf)} of {n} bytes"
            buf += chunk
    return bytes(buf)


def check_invariants(stats: dict[str, int]) -> None:
    """Every delivery ends in exactly one outcome; every write is of one kind."""
    assert stats["deliveries"] == (
        stats["frames_written"]
        + stats["skipped_not_open"]
        + stats["skipped_fragmented"]
        + stats["dropped_slow"]
    ), stats
    if stats["compressed"] == 0:
        assert stats["writes"] == (
            stats["direct_sends"] + stats["transport_writes"] + stats["send_errors"]
        ), stats
    assert stats["partial_writes"] <= stats["direct_sends"], stats


pytestmark = pytest.mark.timeout(60)

SIZES = (0, 125, 126, 65535, 65536, 1 << 20)


def _text(n: int) -> bytes:
    return (b"0123456789abcdefghijklmnopqrstuvwxyz" * (n // 36 + 1))[:n]


async def _recv(client: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(client.recv(), WAIT)


async def test_sizes_decode_byte_exactly(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        pairs = [await h.connect(f"/c{i}") for i in range(3)]
        sinks = [s for _, s in pairs]
        for size in SIZES:
            payload = _text(size)
            assert h.fanout.send_many(sinks, payload) == 3
            for client, _ in pairs:
                got = await _recv(client)
                assert isinstance(got, str)
                assert got.encode() == payload
        # One sink through send(), the 1 MiB case again.
        h.fanout.send(sinks[1], _text(1 << 20))
        assert (await _recv(pairs[1][0])) == _text(1 << 20).decode()
        stats = h.fanout.stats()
        assert stats["frames_encoded"] == len(SIZES) + 1
        assert stats["deliveries"] == 3 * len(SIZES) + 1
        assert stats["frames_written"] == stats["deliveries"]
        assert stats["bytes_written"] == sum(
            3 * len(fanout_reference.frame_text(_text(n))) for n in SIZES
        ) + len(fanout_reference.frame_text(_text(1 << 20)))
        check_invariants(stats)


async def test_non_ascii_text(impl: ModuleType) -> None:
    message = {"type": "message", "data": "héllo wörld — 世界 🚀 Ω≈ç√", "seq": 1}
    payload = orjson.dumps(message)
    async with Harness(impl) as h:
        client, sink = await h.connect("/u")
        h.fanout.send_many({sink}, payload)
        got = await _recv(client)
        assert isinstance(got, str)
        assert orjson.loads(got) == message
        assert got.encode() == payload


async def test_order_preserved_under_coalescing(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        pairs = [await h.connect(f"/c{i}") for i in range(4)]
        sinks = [s for _, s in pairs]
        room_a = {sinks[0], sinks[1], sinks[2]}  # a set
        room_b = [sinks[1], sinks[2], sinks[3]]  # a list
        room_c = {"x": sinks[0], "y": sinks[3]}  # a dict's values
        expected: list[list[str]] = [[] for _ in sinks]
        rounds = 40
        # Everything below is queued within ONE loop iteration (no await).
        for k in range(rounds):
            h.fanout.send_many(room_a, f"A{k}".encode())
            for i in (0, 1, 2):
                expected[i].append(f"A{k}")
            h.fanout.send_many(room_b, f"B{k}".encode(), exclude=sinks[2])
            for i in (1, 3):
                expected[i].append(f"B{k}")
            h.fanout.send_many(room_c.values(), f"C{k}".encode())
            for i in (0, 3):
                expected[i].append(f"C{k}")
            h.fanout.send(sinks[k % 4], f"D{k}".encode())
            expected[k % 4].append(f"D{k}")
        assert h.fanout.stats()["writes"] == 0, "nothing is written before the tick ends"
        for (client, _), want in zip(pairs, expected, strict=True):
            got = [await _recv(client) for _ in want]
            assert got == want
        stats = h.fanout.stats()
        # One write per connection for the whole burst (the cork).
        assert stats["writes"] == 4
        total = sum(len(w) for w in expected)
        assert stats["frames_written"] == total
        assert stats["coalesced"] == total - 4
        assert stats["frames_encoded"] == 4 * rounds
        check_invariants(stats)


async def test_explicit_flush_writes_now(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        client, sink = await h.connect("/f")
        h.fanout.send(sink, b"first")
        h.fanout.send(sink, b"second")
        h.fanout.flush()
        assert h.fanout.stats()["writes"] == 1
        assert await _recv(client) == "first"
        assert await _recv(client) == "second"
        # The flush scheduled by send() found nothing left to do.
        assert h.fanout.stats()["writes"] == 1
        assert sink.pending_bytes + sink.connection.transport.get_write_buffer_size() == 0


async def test_slow_consumer_closed_with_1013_others_keep_receiving(impl: ModuleType) -> None:
    limit = 256 * 1024
    message_size = 16 * 1024
    async with Harness(impl, limit=limit, sndbuf=32 * 1024) as h:
        healthy = [await h.connect(f"/ok{i}") for i in range(2)]
        slow_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        slow_sock.connect(("127.0.0.1", h.port))
        slow_client, slow_sink = await h.connect("/slow", sock=slow_sock, max_queue=1)
        sinks = [s for _, s in healthy] + [slow_sink]
        received = [0, 0]

        async def read(i: int, client: ClientConnection) -> None:
            while True:
                msg = await client.recv()
                assert isinstance(msg, str)
                assert int(msg[:8]) == received[i], "gap or reorder on a healthy client"
                received[i] += 1

        readers = [asyncio.create_task(read(i, c)) for i, (c, _) in enumerate(healthy)]
        sent = 0
        try:
            # The slow client never calls recv(): its queue fills, it stops reading, the
            # kernel buffers fill, then the server-side buffer grows past the limit.
            for _ in range(4000):
                h.fanout.send_many(sinks, f"{sent:08d}".encode() + b"x" * message_size)
                sent += 1
                async with asyncio.timeout(WAIT):
                    while min(received) < sent:
                        await asyncio.sleep(0)
                if h.slow:
                    break
            assert h.slow, "the non-reading client never went over the limit"
            assert len(h.slow) == 1
            reported_sink, buffered = h.slow[0]
            assert reported_sink is slow_sink
            assert buffered > limit
            assert slow_sink.closed
            # The others keep receiving; the slow one is skipped, reported once only.
            for _ in range(5):
                h.fanout.send_many(sinks, f"{sent:08d}".encode())
                sent += 1
            async with asyncio.timeout(WAIT):
                while min(received) < sent:
                    await asyncio.sleep(0.001)
        finally:
            for task in readers:
                task.cancel()
        stats = h.fanout.stats()
        assert stats["slow_consumers"] == 1
        assert stats["skipped_not_open"] >= 5
        check_invariants(stats)
        assert len(h.slow) == 1
        # The slow client now reads: an in-order prefix of what was sent, then 1013.
        got = 0
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(sent + 1):
                msg = await _recv(slow_client)
                assert isinstance(msg, str)
                assert int(msg[:8]) == got
                got += 1
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1013
        assert info.value.rcvd.reason == "slow consumer"
        assert 0 < got < sent
        assert stats["dropped_slow"] >= 1


async def test_connections_closing_mid_fanout(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        pairs = [await h.connect(f"/c{i}") for i in range(6)]
        sinks = [s for _, s in pairs]
        # c2 closed from the server side, c3 from the client side, before the fan-out.
        await sinks[2].connection.close()
        await pairs[3][0].close()
        await asyncio.wait_for(sinks[3].connection.wait_closed(), WAIT)
        h.fanout.send_many(sinks, b"one")
        # Between queueing and the flush: the hub marks c0 closed, c1's transport aborts.
        sinks[0].closed = True
        sinks[1].connection.transport.abort()
        h.fanout.flush()
        stats = h.fanout.stats()
        assert stats["skipped_not_open"] == 4
        assert stats["frames_written"] == 2
        for client, _ in pairs[4:]:
            assert await _recv(client) == "one"
        # Closed sinks are skipped at queue time from now on.
        h.fanout.send_many(sinks, b"two")
        h.fanout.flush()
        stats = h.fanout.stats()
        assert stats["skipped_not_open"] >= 4 + 2
        assert stats["frames_written"] == 4
        for client, _ in pairs[4:]:
            assert await _recv(client) == "two"
        check_invariants(stats)


async def test_peer_reset_counted_and_connection_closes(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        other, other_sink = await h.connect("/other")
        raw, sink = await h.raw("/rst")
        assert sink.fd >= 0
        # Reset the connection (RST, no FIN) and write before the loop can notice it.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        h.fanout.send_many([sink, other_sink], b"after reset")
        h.fanout.flush()
        stats = h.fanout.stats()
        assert stats["send_errors"] == 1
        assert sink.closed
        await asyncio.wait_for(sink.connection.wait_closed(), WAIT)
        assert await _recv(other) == "after reset"
        h.fanout.send(sink, b"skipped")
        h.fanout.flush()
        stats = h.fanout.stats()
        assert stats["send_errors"] == 1
        check_invariants(stats)


async def test_fragmented_send_is_never_interleaved(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        client, sink = await h.connect("/frag")
        release = asyncio.Event()

        async def fragments() -> Any:
            yield "part1-"
            await release.wait()
            yield "part2"

        sending = asyncio.create_task(sink.connection.send(fragments()))
        async with asyncio.timeout(WAIT):
            while sink.connection.send_in_progress is None:
                await asyncio.sleep(0)
        h.fanout.send(sink, b"must not interleave")
        h.fanout.flush()
        assert h.fanout.stats()["skipped_fragmented"] == 1
        release.set()
        await asyncio.wait_for(sending, WAIT)
        assert await _recv(client) == "part1-part2"
        h.fanout.send(sink, b"after")
        assert await _recv(client) == "after"
        check_invariants(h.fanout.stats())


async def test_ping_and_send_many_is_one_write_of_a_ping_and_the_frame(
        impl: ModuleType) -> None:
    """The heartbeat's keepalive: an empty ping then the frame, framed once, one write per
    connection, after what was queued before it; a compressed sink is refused."""
    async with Harness(impl) as h:
        (a, sa), (b, sb) = [await h.raw(f"/hb{i}") for i in range(2)]
        h.fanout.send(sa, b"before")
        assert h.fanout.ping_and_send_many([sa, sb], b"beat") == 2
        h.fanout.flush()
        ping = b"\x89\x00"
        beat = fanout_reference.frame_text(b"beat")
        first = fanout_reference.frame_text(b"before")
        assert await read_exactly(a, len(first) + 2 + len(beat)) == first + ping + beat
        assert await read_exactly(b, 2 + len(beat)) == ping + beat
        stats = h.fanout.stats()
        assert stats["writes"] == 2 and stats["frames_encoded"] == 2
        check_invariants(stats)
        a.close()
        b.close()
    async with Harness(impl, compression="deflate") as h:
        _, zsink = await h.connect("/z", compression="deflate")
        with pytest.raises(ValueError, match="compressed sink"):
            h.fanout.ping_and_send_many([zsink], b"beat")


async def test_compressed_connections_take_the_per_connection_path(impl: ModuleType) -> None:
    async with Harness(impl, compression="deflate") as h:
        zipped, zsink = await h.connect("/z", compression="deflate")
        plain, psink = await h.connect("/p", compression=None)
        assert zsink.compressed
        assert not psink.compressed
        payloads = [b"first", _text(70000), "n\u00e9on \U0001f680".encode()]
        for p in payloads:
            h.fanout.send_many([zsink, psink], p)
        for client in (zipped, plain):
            for p in payloads:
                got = await _recv(client)
                assert isinstance(got, str)
                assert got.encode() == p
        stats = h.fanout.stats()
        assert stats["compressed"] == 3
        assert stats["frames_written"] == 6
        assert stats["writes"] == 2
        assert stats["bytes_written"] == sum(len(fanout_reference.frame_text(p)) for p in payloads)
        check_invariants(stats)


async def test_partial_write_remainder_keeps_order(impl: ModuleType) -> None:
    async with Harness(impl, sndbuf=16 * 1024) as h:
        client, sink = await h.connect("/partial")
        payloads = [bytes([65 + i]) * 300_000 for i in range(3)]
        for p in payloads:
            h.fanout.send(sink, p)
        await asyncio.sleep(0)  # flush: the kernel takes only part of it
        assert sink.pending_bytes + sink.connection.transport.get_write_buffer_size() > 0, (
            "the remainder must be queued in the transport")
        h.fanout.send(sink, b"tail")  # the transport still buffers: no direct send
        h.fanout.flush()
        for p in [*payloads, b"tail"]:
            got = await _recv(client)
            assert isinstance(got, str)
            assert got.encode() == p
        stats = h.fanout.stats()
        assert stats["partial_writes"] == 1
        assert stats["transport_writes"] == 1
        assert stats["direct_sends"] == 1
        check_invariants(stats)


async def test_callback_error_keeps_other_connections_queued(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        _, big = await h.connect("/big")
        small_client, small = await h.connect("/small")
        calls: list[int] = []

        def failing_callback(sink: Any, buffered: int) -> None:
            calls.append(buffered)
            raise RuntimeError("callback failed")

        fanout = impl.Fanout(asyncio.get_running_loop(), 1000, failing_callback)
        fanout.send(big, b"x" * 2000)  # over the limit: reported at the flush
        fanout.send(small, b"still delivered")
        with pytest.raises(RuntimeError, match="callback failed"):
            fanout.flush()
        assert calls == [2004]
        assert big.closed
        # The connection after the failing one was not lost: it is flushed next tick.
        assert await _recv(small_client) == "still delivered"
        stats = fanout.stats()
        assert stats["slow_consumers"] == 1
        assert stats["dropped_slow"] == 1
        check_invariants(stats)


async def test_client_connection_is_refused(impl: ModuleType) -> None:
    async with Harness(impl) as h:
        client, _ = await h.connect("/client")
        with pytest.raises(ValueError, match="server-side"):
            impl.Sink(client, None)


async def test_invalid_limit_is_refused(impl: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="Required action"):
        impl.Fanout(loop, 0, lambda sink, n: None)


async def _wire_bytes(kind: FanoutKind) -> tuple[bytes, dict[str, int]]:
    """Raw bytes a client receives for a fixed scenario, and the counters."""
    async with Harness(load_fanout(kind)) as h:
        raw, sink = await h.raw("/raw")
        _, other = await h.connect("/other")
        payloads = [_text(n) for n in (0, 5, 125, 126, 300, 65535, 65536, 200000)]
        payloads.append("çà 世界".encode())
        for i, p in enumerate(payloads):
            if i % 3 == 0:
                h.fanout.send(sink, p)
            else:
                h.fanout.send_many([other, sink], p, exclude=other if i % 2 else None)
            if i % 4 == 3:
                await asyncio.sleep(0)
        expected = b"".join(fanout_reference.frame_text(p) for p in payloads)
        data = await read_exactly(raw, len(expected))
        assert data == expected
        await asyncio.sleep(0)
        raw.close()
        stats = h.fanout.stats()
        return data, {
            k: v
            for k, v in stats.items()
            if k not in ("direct_sends", "partial_writes", "transport_writes")
        }


async def test_python_and_compiled_identical_bytes_and_counts() -> None:
    py_bytes, py_stats = await _wire_bytes("python")
    c_bytes, c_stats = await _wire_bytes("compiled")
    assert py_bytes == c_bytes
    assert py_stats == c_stats


@pytest.mark.parametrize("kind", ["python", "compiled"])
def test_on_uvloop(kind: FanoutKind, uvloop_runner: Any) -> None:
    impl = load_fanout(kind)

    async def scenario() -> None:
        await test_order_preserved_under_coalescing(impl)
        await test_sizes_decode_byte_exactly(impl)
        await test_peer_reset_counted_and_connection_closes(impl)
        await test_connections_closing_mid_fanout(impl)

    uvloop_runner.run(scenario())
