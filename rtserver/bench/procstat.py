"""Server process statistics from /proc: CPU time (utime+stime) and VmRSS."""

from __future__ import annotations

import os

__all__ = ["ProcSample", "children_cpu_seconds", "cpu_seconds", "descendants", "rss_bytes",
           "sample"]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        raw = fh.read()
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (scan of /proc by ppid)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited between listdir and open
        children.setdefault(ppid, []).append(int(name))
    out = [pid]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], []))
        i += 1
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process in seconds."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / _TICK


def rss_bytes(pid: int) -> int:
    """VmRSS of one process in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS. Required action: check the pid")


class ProcSample:
    """CPU seconds and RSS summed over a set of processes at one moment."""

    __slots__ = ("cpu", "per_pid_cpu", "pids", "rss")

    def __init__(
        self, pids: list[int], cpu: float, rss: int, per_pid_cpu: dict[int, float]
    ) -> None:
        self.pids = pids
        self.cpu = cpu
        self.rss = rss
        self.per_pid_cpu = per_pid_cpu


def sample(pids: list[int]) -> ProcSample:
    """Sum CPU and RSS over ``pids``; a vanished pid raises (no silent undercount)."""
    cpu = 0.0
    rss = 0
    per: dict[int, float] = {}
    for pid in pids:
        try:
            c = cpu_seconds(pid)
            r = rss_bytes(pid)
        except FileNotFoundError as exc:
            raise RuntimeError(
                f"server process {pid} vanished during the run. Required action: check the "
                "server log in the report directory"
            ) from exc
        per[pid] = c
        cpu += c
        rss += r
    return ProcSample(pids, cpu, rss, per)


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime of one process in seconds: the CPU of its children it has reaped
    (a respawning supervisor's dead workers)."""
    f = _stat_fields(pid)
    return (int(f[13]) + int(f[14])) / _TICK
