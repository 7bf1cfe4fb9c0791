"""Domain handlers (quotes, analytics, admin, notifications) that plug into the router."""

__all__: list[str] = []
