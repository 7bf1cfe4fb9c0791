"""Python reference peers for the load harness: ``websockets-broadcast`` and ``naive``.

Both speak the bench subset of the rtserver wire protocol:

* on accept: ``connection`` welcome frame, then ``authenticated`` (token from ``?token=``,
  HS256 JWT verified with ``RTSERVER_JWT_SECRET``: ``sub``, ``perms``, ``rooms``, ``exp``);
* ``subscribe`` -> ``subscribed`` with the room's current ``seq``;
* ``publish`` -> ``ack`` with the new ``seq`` to the publisher and ``message`` to every member;
* ``unsubscribe`` -> ``unsubscribed``; ``ping`` -> ``pong``; anything else -> ``error``.

Per-room ``seq`` starts at 1 and increases by exactly one per publish.

Fan-out modes:

* ``broadcast``: :func:`websockets.asyncio.server.broadcast` (write to every member's
  transport without awaiting), on uvloop;
* ``naive``: ``for ws in members: await ws.send(frame)``, the connection-manager pattern
  found in most FastAPI tutorials.

Fault injection (test-only; intentionally absent from ``docs/bench.md`` and from
``--help``): ``--inject drop-every=N`` silently skips every N-th delivery and
``--inject duplicate-every=N`` sends every N-th delivery twice and
``--inject no-ack-every=N`` leaves every N-th publish unacknowledged (still delivered),
in ``naive`` mode only.
The harness's smoke tests use it (through the harness's equally hidden
``--inject-peer-fault`` option) to prove that loss, duplicates and unanswered
publishes are detected.

Run: ``python -m rtserver.bench.peers.pyserver --mode naive --port 0``; the listening port is
printed on stderr as a JSON line ``{"event": "listening", "port": N, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["Injector", "PeerServer", "main"]


def _log(event: str, **fields: Any) -> None:
    line = {"event": event, "logger": "rtserver.bench.peer", **fields}
    sys.stderr.write(orjson.dumps(line).decode())
    sys.stderr.write("\n")
    sys.stderr.flush()


@dataclass
class Injector:
    """Test-only delivery faults for the ``naive`` peer (see module docstring)."""

    drop_every: int = 0
    duplicate_every: int = 0
    no_ack_every: int = 0
    count: int = 0
    publishes: int = 0

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Injector:
        """Parse ``drop-every=N`` / ``duplicate-every=N`` / ``no-ack-every=N`` specs."""
        inj = cls()
        for spec in specs:
            name, sep, value = spec.partition("=")
            if not sep or not value.isdigit() or int(value) < 1:
                raise SystemExit(
                    f"invalid --inject {spec!r}. Required action: use drop-every=N, "
                    "duplicate-every=N or no-ack-every=N with N >= 1"
                )
            if name == "drop-every":
                inj.drop_every = int(value)
            elif name == "duplicate-every":
                inj.duplicate_every = int(value)
            elif name == "no-ack-every":
                inj.no_ack_every = int(value)
            else:
                raise SystemExit(
                    f"unknown --inject fault {name!r}. Required action: use drop-every, "
                    "duplicate-every or no-ack-every"
                )
        return inj

    @property
    def active(self) -> bool:
        """True when any fault is configured."""
        return bool(self.drop_every or self.duplicate_every or self.no_ack_every)

    def ack(self) -> bool:
        """Whether to acknowledge the next publish."""
        self.publishes += 1
        return not (self.no_ack_every and self.publishes % self.no_ack_every == 0)

    def copies(self) -> int:
        """How many times to send the next delivery (0 = drop, 2 = duplicate)."""
        self.count += 1
        if self.drop_every and self.count % self.drop_every == 0:
            return 0
        if self.duplicate_every and self.count % self.duplicate_every == 0:
            return 2
        return 1


@dataclass
class _Room:
    seq: int = 0
    members: set[ServerConnection] = field(default_factory=set)


class PeerServer:
    """One reference peer: rooms, seq, token check and the chosen fan-out mode."""

    def __init__(self, secret: str, mode: str, injector: Injector) -> None:
        if mode not in ("broadcast", "naive"):
            raise SystemExit(f"unknown peer mode {mode!r}. Required action: broadcast or naive")
        if injector.active and mode != "naive":
            raise SystemExit("--inject works with --mode naive only. Required action: fix the flag")
        self.secret = secret
        self.mode = mode
        self.injector = injector
        self.rooms: dict[str, _Room] = {}
        self.connections = 0
        self.worker = os.getpid()

    def _claims(self, ws: ServerConnection) -> dict[str, Any]:
        path = ws.request.path if ws.request is not None else ""
        parts = urlsplit(path)
        if parts.path != "/ws":
            raise ValueError(f"unknown path {parts.path!r}")
        tokens = parse_qs(parts.query).get("token")
        if not tokens:
            raise ValueError("missing token query parameter")
        claims: dict[str, Any] = jwt.decode(
            tokens[0], self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
        )
        return claims

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one connection until it closes."""
        try:
            claims = self._claims(ws)
        except (ValueError, jwt.PyJWTError) as exc:
            await ws.send(
                orjson.dumps(
                    {
                        "type": "error",
                        "code": "unauthorized",
                        "message": f"token rejected: {exc}",
                        "action": "Required action: send a valid HS256 token",
                    }
                ).decode()
            )
            await ws.close(1008, "unauthorized")
            return
        user = str(claims["sub"])
        perms = [str(p) for p in claims.get("perms", [])]
        grants = [str(g) for g in claims.get("rooms", [])]
        self.connections += 1
        await ws.send(
            orjson.dumps(
                {
                    "type": "connection",
                    "status": "connected",
                    "connection_id": uuid.uuid4().hex,
                    "worker": self.worker,
                    "server_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).decode()
        )
        await ws.send(
            orjson.dumps(
                {"type": "authenticated", "user": user, "permissions": perms, "anonymous": False}
            ).decode()
        )
        joined: set[str] = set()
        user_json = orjson.dumps(user)
        try:
            async for raw in ws:
                await self._on_message(ws, raw, user_json, perms, grants, joined)
        except ConnectionClosed:
            pass  # a closing client ends the loop; nothing is lost on our side
        finally:
            self.connections -= 1
            for name in joined:
                room = self.rooms.get(name)
                if room is not None:
                    room.members.discard(ws)
                    if not room.members and room.seq == 0:
                        del self.rooms[name]

    async def _error(self, ws: ServerConnection, code: str, message: str, mid: Any) -> None:
        await ws.send(
            orjson.dumps(
                {
                    "type": "error",
                    "code": code,
                    "message": message,
                    "action": "Required action: fix the request",
                    "id": mid,
                }
            ).decode()
        )

    async def _on_message(
        self,
        ws: ServerConnection,
        raw: str | bytes,
        user_json: bytes,
        perms: list[str],
        grants: list[str],
        joined: set[str],
    ) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self._error(ws, "bad_json", f"frame is not JSON: {exc}", None)
            return
        if not isinstance(msg, dict):
            await self._error(ws, "bad_message", "frame is not a JSON object", None)
            return
        kind = msg.get("type")
        mid = msg.get("id")
        if kind == "ping":
            await ws.send(orjson.dumps({"type": "pong", "id": mid}).decode())
            return
        room_name = msg.get("room")
        if kind not in ("subscribe", "unsubscribe", "publish") or not isinstance(room_name, str):
            await self._error(ws, "bad_message", f"unsupported message type {kind!r}", mid)
            return
        if not any(fnmatch.fnmatchcase(room_name, g) for g in grants):
            await self._error(ws, "forbidden", f"no grant for room {room_name!r}", mid)
            return
        if kind == "subscribe":
            room = self.rooms.setdefault(room_name, _Room())
            room.members.add(ws)
            joined.add(room_name)
            await ws.send(
                orjson.dumps(
                    {"type": "subscribed", "room": room_name, "seq": room.seq, "id": mid}
                ).decode()
            )
        elif kind == "unsubscribe":
            existing = self.rooms.get(room_name)
            if existing is not None:
                existing.members.discard(ws)
            joined.discard(room_name)
            await ws.send(
                orjson.dumps({"type": "unsubscribed", "room": room_name, "id": mid}).decode()
            )
        else:
            if "publish" not in perms:
                await self._error(ws, "forbidden", "publish permission missing", mid)
                return
            room = self.rooms.setdefault(room_name, _Room())
            room.seq += 1
            seq = room.seq
            frame = (
                b'{"type":"message","room":'
                + orjson.dumps(room_name)
                + b',"from":'
                + user_json
                + b',"data":'
                + orjson.dumps(msg.get("data"))
                + b',"seq":'
                + str(seq).encode()
                + b"}"
            ).decode()
            if self.mode != "naive" or self.injector.ack():
                await ws.send(orjson.dumps(
                    {"type": "ack", "room": room_name, "seq": seq, "id": mid}).decode())
            members = list(room.members)
            if self.mode == "broadcast":
                broadcast(members, frame)
            else:
                await self._naive_fanout(members, frame)

    async def _naive_fanout(self, members: list[ServerConnection], frame: str) -> None:
        inj = self.injector
        for member in members:
            copies = inj.copies() if inj.active else 1
            for _ in range(copies):
                try:
                    await member.send(frame)
                except ConnectionClosed:
                    break  # the member left; its handler removes it from the room


async def _serve(args: argparse.Namespace) -> None:
    secret = os.environ.get("RTSERVER_JWT_SECRET")
    if not secret:
        raise SystemExit("RTSERVER_JWT_SECRET is not set. Required action: export the HS256 secret")
    peer = PeerServer(secret, args.mode, Injector.parse(args.inject))
    stop = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(
        peer.handler,
        args.host,
        args.port,
        compression=None,
        ping_interval=None,
        max_queue=None,
        backlog=args.backlog,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _log("listening", port=port, mode=args.mode, pid=os.getpid(), inject=args.inject)
        await stop
    _log("stopped", mode=args.mode)


def main(argv: list[str] | None = None) -> int:
    """Run a Python reference peer until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m rtserver.bench.peers.pyserver")
    parser.add_argument("--mode", choices=["broadcast", "naive"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog")
    parser.add_argument("--inject", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.host.startswith("127."):
        raise SystemExit("peers listen on 127.0.0.0/8 only. Required action: use --host 127.x.y.z")
    uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
