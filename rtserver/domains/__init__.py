"""Domain plugins shipped with rtserver (see rtserver/plugin.py).

The core never imports this package: the server loads the classes named in
``[domains] enabled`` by name. ``insurance`` is the insurance quoting
platform's domain: quotes, analytics, admin streams, alerts, notifications.
"""
