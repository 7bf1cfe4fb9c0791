"""Backend ingress: messages from backend services into rooms and domains.

* :mod:`rtserver.ingress.payloads` -- the ingress message base, the core kind
  ``room_publish``, and the decoder built from the core kinds plus the kinds the
  enabled domains register.
* :mod:`rtserver.ingress.postgres_notify` -- PostgreSQL ``LISTEN/NOTIFY`` (one
  leader by advisory lock) and ``send_ingress``.
* :mod:`rtserver.ingress.redis_list` -- a Redis list (``BLPOP``) and ``push_ingress``.
* :mod:`rtserver.ingress.dispatch` -- what each valid message does on the node.
"""
