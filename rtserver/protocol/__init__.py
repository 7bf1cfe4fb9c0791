"""The wire protocol: message schemas, codec and the sans-I/O session."""

__all__: list[str] = []
