"""A complete domain plugin: a chat room with a typed message and a join greeting.

Enable it with ``rtserver serve --domains examples.domains.chat:ChatDomain``
(the module must be importable, e.g. ``PYTHONPATH=.``). docs/architecture.md
shows this file; tests/test_example_domain.py runs it against a real server.
"""

from __future__ import annotations

from typing import ClassVar

from rtserver.context import Connection, HandlerContext
from rtserver.plugin import DomainPlugin
from rtserver.protocol.messages import ClientMessage, MessageId, ServerMessage
from rtserver.router import Router


class Say(ClientMessage, tag="chat_say", frozen=True):
    """A client says ``text`` in ``room``."""

    room: str
    text: str
    id: MessageId = None


class Said(ServerMessage, tag="chat_said", frozen=True):
    """What everyone in the room receives."""

    room: str
    user: str | None
    text: str


class ChatDomain(DomainPlugin):
    """Per-node state lives on the instance: here, how many lines were said."""

    name: ClassVar[str] = "chat"

    def install(self, router: Router, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.lines = 0
        router.register(Say, self.say)
        router.on_subscribe(self.greet)

    async def say(self, conn: Connection, msg: Say) -> None:
        if msg.room not in conn.rooms:
            self.ctx.error(conn, "not_subscribed", f"not in {msg.room!r}",
                           "Required action: subscribe to the room first", msg.id)
            return
        self.lines += 1
        await self.ctx.send_to_room(msg.room, Said(room=msg.room, user=conn.user, text=msg.text))

    async def greet(self, conn: Connection, room: str) -> None:
        self.ctx.reply(conn, Said(room=room, user=None, text=f"welcome to {room}"))
