"""In-process metrics rendered in the Prometheus text format.

Counters and gauges are plain objects incremented in place (no lock: one
event loop per process). Labelled series are kept in a dict keyed by the
label values tuple. ``/metrics`` renders :data:`REGISTRY`; with several
workers every series also carries ``worker``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["REGISTRY", "Counter", "Gauge", "Registry"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}
        if not labels:
            self.values[()] = 0.0

    def samples(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """Label values and value of every series."""
        yield from self.values.items()


class Counter(_Metric):
    """A monotonically increasing count."""

    kind = "counter"

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series named by ``label_values``."""
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def get(self, *label_values: str) -> float:
        """Current value of one series (0 when never incremented)."""
        return self.values.get(label_values, 0.0)


class Gauge(_Metric):
    """A value that goes up and down, set directly or computed at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 collect: Callable[[], dict[tuple[str, ...], float]] | None = None) -> None:
        super().__init__(name, help_text, labels)
        self.collect = collect

    def set(self, value: float, *label_values: str) -> None:
        """Set the series named by ``label_values``."""
        self.values[label_values] = value

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` (may be negative)."""
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def get(self, *label_values: str) -> float:
        """Current value of one series."""
        return self.values.get(label_values, 0.0)

    def samples(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """Label values and value of every series (collected now if computed)."""
        if self.collect is not None:
            yield from self.collect().items()
        else:
            yield from self.values.items()


class Registry:
    """All metrics of this process."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        """Create (or return the existing) counter ``name``."""
        existing = self.metrics.get(name)
        if isinstance(existing, Counter):
            return existing
        metric = Counter(name, help_text, labels)
        self.metrics[name] = metric
        return metric

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = (),
              collect: Callable[[], dict[tuple[str, ...], float]] | None = None) -> Gauge:
        """Create (or replace the collector of) gauge ``name``."""
        existing = self.metrics.get(name)
        if isinstance(existing, Gauge):
            if collect is not None:
                existing.collect = collect
            return existing
        metric = Gauge(name, help_text, labels, collect)
        self.metrics[name] = metric
        return metric

    def render(self, extra_labels: dict[str, str] | None = None) -> str:
        """The Prometheus text exposition of every metric."""
        extra = extra_labels or {}
        lines: list[str] = []
        for metric in self.metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for label_values, value in metric.samples():
                pairs = [*zip(metric.labels, label_values, strict=True), *extra.items()]
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
                suffix = f"{{{label_text}}}" if label_text else ""
                lines.append(f"{metric.name}{suffix} {value:g}")
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
