"""Merging of Prometheus text expositions (the cluster ``/metrics`` of the supervisor)."""

from __future__ import annotations

__all__ = ["merge_metrics_texts"]


def merge_metrics_texts(texts: list[str]) -> str:
    """Merge Prometheus text expositions into one (one HELP/TYPE per family).

    Each text is expected to carry its own distinguishing label (``worker``);
    samples are grouped under their family in first-seen order.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    order: list[str] = []
    for text in texts:
        current: str | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                if name not in families:
                    families[name] = ([], [])
                    order.append(name)
                head = families[name][0]
                if not any(h.startswith(line[:7]) for h in head):
                    head.append(line)
                current = name
            elif line.startswith("#"):
                continue
            else:
                name = current if current is not None else line.split("{", 1)[0].split(" ", 1)[0]
                if name not in families:
                    families[name] = ([], [])
                    order.append(name)
                families[name][1].append(line)
    out: list[str] = []
    for name in order:
        head, samples = families[name]
        out.extend(head)
        out.extend(samples)
    return "\n".join(out) + "\n"
