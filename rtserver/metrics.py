"""In-process metrics rendered in the Prometheus text format.

Counters and gauges are plain objects incremented in place (no lock: one
event loop per process). Labelled series are kept in a dict keyed by the
label values tuple. ``/metrics`` renders :data:`REGISTRY`; with several
workers every series also carries ``worker``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

__all__ = ["REGISTRY", "Counter", "Gauge", "Histogram", "Registry"]


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


class Histogram(_Metric):
    """Observations counted in cumulative buckets (upper bounds in ``buckets``), with sum.

    ``observe`` is O(number of buckets) with a bisect, no allocation: meant for
    once-per-event use (once per publication, never once per delivery).
    """

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...],
                 labels: tuple[str, ...] = ()) -> None:
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram {name}: buckets must be increasing and distinct. "
                             "Required action: pass sorted upper bounds")
        super().__init__(name, help_text, labels)
        self.buckets = buckets
        #: label values -> [count per bucket (not cumulative) ..., +Inf count]
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}
        if not labels:
            self.counts[()] = [0] * (len(buckets) + 1)
            self.sums[()] = 0.0

    def observe(self, value: float, *label_values: str) -> None:
        """Count one observation of ``value`` in the series named by ``label_values``."""
        counts = self.counts.get(label_values)
        if counts is None:
            counts = self.counts[label_values] = [0] * (len(self.buckets) + 1)
            self.sums[label_values] = 0.0
        counts[bisect_left(self.buckets, value)] += 1
        self.sums[label_values] += value

    def snapshot(self, *label_values: str) -> list[int]:
        """A copy of the per-bucket counts of one series (for deltas between two reads)."""
        return list(self.counts.get(label_values, [0] * (len(self.buckets) + 1)))

    def quantile(self, q: float, counts: list[int]) -> float | None:
        """The ``q`` quantile estimated from per-bucket ``counts`` (linear inside the
        bucket, as Prometheus' ``histogram_quantile``); None without observations. A
        quantile in the +Inf bucket is reported as the largest finite bound."""
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(counts):
            if n and seen + n >= rank:
                if i == len(self.buckets):
                    return self.buckets[-1]
                lower = self.buckets[i - 1] if i > 0 else 0.0
                return lower + (self.buckets[i] - lower) * ((rank - seen) / n)
            seen += n
        return self.buckets[-1]

    def samples(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """Bucket/sum/count series are rendered by :meth:`Registry.render`."""
        yield from ()


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

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...],
                  labels: tuple[str, ...] = ()) -> Histogram:
        """Create (or return the existing) histogram ``name``."""
        existing = self.metrics.get(name)
        if isinstance(existing, Histogram):
            return existing
        metric = Histogram(name, help_text, buckets, labels)
        self.metrics[name] = metric
        return metric

    def render(self, extra_labels: dict[str, str] | None = None) -> str:
        """The Prometheus text exposition of every metric."""
        extra = extra_labels or {}
        lines: list[str] = []
        for metric in self.metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            if isinstance(metric, Histogram):
                _render_histogram(metric, extra, lines)
                continue
            for label_values, value in metric.samples():
                pairs = [*zip(metric.labels, label_values, strict=True), *extra.items()]
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
                suffix = f"{{{label_text}}}" if label_text else ""
                lines.append(f"{metric.name}{suffix} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: dict[str, str],
            le: str | None = None) -> str:
    pairs = [*zip(names, values, strict=True), *extra.items()]
    if le is not None:
        pairs.append(("le", le))
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return f"{{{text}}}" if text else ""


def _render_histogram(metric: Histogram, extra: dict[str, str], lines: list[str]) -> None:
    for label_values, counts in metric.counts.items():
        cumulative = 0
        for bound, n in zip(metric.buckets, counts, strict=False):
            cumulative += n
            lines.append(f"{metric.name}_bucket"
                         f"{_labels(metric.labels, label_values, extra, f'{bound:g}')} "
                         f"{cumulative}")
        cumulative += counts[-1]
        lines.append(f"{metric.name}_bucket{_labels(metric.labels, label_values, extra, '+Inf')}"
                     f" {cumulative}")
        plain = _labels(metric.labels, label_values, extra)
        lines.append(f"{metric.name}_sum{plain} {metric.sums[label_values]:g}")
        lines.append(f"{metric.name}_count{plain} {cumulative}")


REGISTRY = Registry()
