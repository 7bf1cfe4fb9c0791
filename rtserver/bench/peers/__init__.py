"""Reference peer servers speaking the bench subset of the rtserver protocol.

* ``websockets-broadcast``: websockets ``broadcast()`` on uvloop
  (:mod:`rtserver.bench.peers.pyserver`).
* ``naive``: one ``await ws.send()`` per member, the FastAPI connection-manager pattern
  (:mod:`rtserver.bench.peers.pyserver`).
* ``node-ws``: Node.js with the ``ws`` package (``ws_peer.js``).
"""

from __future__ import annotations

__all__ = ["PEER_NAMES"]

PEER_NAMES: tuple[str, ...] = ("websockets-broadcast", "naive", "node-ws")
