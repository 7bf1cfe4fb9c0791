"""rtserver: a high-throughput real-time WebSocket server.

The public API for embedding and server-side code is :class:`rtserver.node.Node`
(``send_to_connection``, ``send_to_user``, ``send_to_room``, ``broadcast``) and
:class:`rtserver.router.Router` for domain handlers; :class:`rtserver.server.RtServer`
runs one worker.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
