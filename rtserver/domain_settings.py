"""Typed settings of the domain handlers (the ``[domain]`` configuration section).

Every value is required: the server builds :class:`DomainSettings` from its
configuration file; the insurance domain plugin (rtserver.domains.insurance) uses it.
There are no hidden defaults; :meth:`DomainSettings.validate` refuses
impossible values with the key and the fix.

This module imports nothing from rtserver (and lives outside the handlers
package, whose __init__ imports the node), so ``rtserver.config`` may embed
:class:`DomainSettings` as its ``domain`` section.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["DomainSettings", "FieldType"]

FieldType = Literal["string", "number", "integer", "boolean", "date"]
"""Type of an editable quote field: ``string`` (at most ``edit_max_string_length``
characters), ``number`` (finite JSON number), ``integer``, ``boolean``,
``date`` (ISO ``YYYY-MM-DD`` string)."""


class DomainSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[domain]``: quotes, analytics, admin streams and alerts.

    * ``analytics_interval``: seconds between ``analytics_update`` frames of one
      (dashboard, filters); ticks are aligned to multiples of it on the wall
      clock so that every worker agrees on the interval number.
    * ``analytics_top_states``: states listed in the quotes dashboard.
    * ``analytics_max_streams``: distinct (dashboard, filters) one worker
      computes at once; more are refused with ``too_many_streams``.
    * ``monitoring_min_interval`` / ``monitoring_max_interval``: accepted range
      of ``start_monitoring.update_interval`` (seconds).
    * ``user_activity_interval``: seconds between polls for new admin activity.
    * ``user_activity_limit``: entries per ``user_activity`` frame (and per poll).
    * ``performance_interval``: seconds between ``performance_metrics`` frames.
    * ``latency_samples``: latest durations kept per measured operation for
      percentiles (handler, publish and query latency).
    * ``loop_lag_interval``: seconds between event-loop lag samples (the same
      task checks the slow-consumer rate and retries unstored alerts).
    * ``alerts_list_limit``: most unresolved alerts one ``alerts_list`` returns.
    * ``alert_pending_max``: alerts kept in memory while the database cannot
      store them (more are counted and logged as lost).
    * ``slow_consumer_alert_threshold``: slow-consumer closes within
      ``slow_consumer_alert_window`` seconds that raise a ``slow_consumers`` alert.
    * ``edit_max_string_length``: longest value of a ``string`` field.
    * ``editable_fields``: quote fields clients may edit, with their type.
    """

    analytics_interval: float
    analytics_top_states: int
    analytics_max_streams: int
    monitoring_min_interval: float
    monitoring_max_interval: float
    user_activity_interval: float
    user_activity_limit: int
    performance_interval: float
    latency_samples: int
    loop_lag_interval: float
    alerts_list_limit: int
    alert_pending_max: int
    slow_consumer_alert_threshold: int
    slow_consumer_alert_window: float
    edit_max_string_length: int
    editable_fields: dict[str, FieldType]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the key and the fix for an impossible value."""
        positive = ("analytics_interval", "monitoring_min_interval", "user_activity_interval",
                    "performance_interval", "loop_lag_interval", "slow_consumer_alert_window")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"domain.{key} must be > 0 seconds. Required action: set a "
                                 "positive number of seconds")
        at_least_one = ("analytics_top_states", "analytics_max_streams", "user_activity_limit",
                        "latency_samples", "alerts_list_limit", "alert_pending_max",
                        "slow_consumer_alert_threshold", "edit_max_string_length")
        for key in at_least_one:
            if getattr(self, key) < 1:
                raise ValueError(f"domain.{key} must be >= 1. Required action: set a positive "
                                 "whole number")
        if self.monitoring_max_interval < self.monitoring_min_interval:
            raise ValueError("domain.monitoring_max_interval is below monitoring_min_interval. "
                             "Required action: set max >= min")
        for name in self.editable_fields:
            if not name or len(name) > 64 or not name.replace("_", "a").isalnum():
                raise ValueError(f"domain.editable_fields: {name!r} is not a field name "
                                 "([A-Za-z0-9_], 1..64 characters). Required action: rename it")
