"""How many generator processes and 127.0.0.x source addresses a load run needs.

Two limits of the machine bound the connections one run can open on loopback:

* **descriptors**: a generator process holds one socket per connection and raises its
  soft ``RLIMIT_NOFILE`` to the hard limit, so it can hold at most
  ``hard - FD_RESERVE`` sockets (and at most ``--per-generator``);
* **ephemeral ports**: every connection from one source address to the server's one
  address and port needs a local port of its own, so one source address carries at
  most ``PORT_SHARE`` of ``net.ipv4.ip_local_port_range`` (25,408 of the default
  28,232 ports). Above that each generator process binds its own source address,
  ``127.0.0.2``, ``127.0.0.3``, ... up to ``127.0.0.254`` (:data:`MAX_SOURCES`).

So the most receiver connections of a run are

* with ``--source-addrs auto`` or ``on``:
  ``(MAX_SOURCES - P) * min(--per-generator, hard - FD_RESERVE, port share)``,
  where P is 1 when the publishers have a process of their own (broadcast, rooms,
  users) and 0 otherwise;
* with ``--source-addrs off`` (every connection from 127.0.0.1): the port share
  minus the publisher connections;

and with ``--generators G`` at most G times the per-process figure. With the
defaults on a machine whose hard limit is 20,000, 100,000 connections take 7
receiver processes of at most 15,000 sockets, each on its own source address.

A spawned server holds one descriptor per connection too: :func:`server_fd_problem`
says when the soft limit it inherits from the harness cannot hold the run.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FD_RESERVE",
    "MAX_SOURCES",
    "PORT_RANGE_FILE",
    "PORT_SHARE",
    "CapacityError",
    "GeneratorPlan",
    "HostLimits",
    "host_limits",
    "plan_generators",
    "raise_nofile",
    "server_fd_problem",
    "source_address",
]

#: Descriptors a process keeps besides its sockets (stdio, epoll, pipes, log files).
FD_RESERVE = 64
#: Fraction of the ephemeral port range that one source address may use.
PORT_SHARE = 0.9
#: Source addresses 127.0.0.2 .. 127.0.0.254, one per generator process.
FIRST_SOURCE = 2
MAX_SOURCES = 254 - FIRST_SOURCE + 1
PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class CapacityError(ValueError):
    """The run does not fit the machine's descriptor or port limits."""


@dataclass(frozen=True)
class HostLimits:
    """The limits of this machine that bound a run."""

    #: Hard RLIMIT_NOFILE: the most descriptors a generator process can raise itself to.
    fd_hard: int
    #: Soft RLIMIT_NOFILE of the harness: what a spawned server or peer inherits.
    fd_soft: int
    #: Ephemeral ports per (source address, destination) pair.
    ports: int

    @property
    def port_share(self) -> int:
        """Connections one source address may carry (:data:`PORT_SHARE` of the ports)."""
        return int(self.ports * PORT_SHARE)


def host_limits() -> HostLimits:
    """Read the descriptor limits and the ephemeral port range of this machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        low, high = (int(x) for x in PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError) as exc:
        raise CapacityError(
            f"cannot read the ephemeral port range from {PORT_RANGE_FILE}: {exc}. "
            "Required action: run the harness on Linux with /proc mounted"
        ) from exc
    unlimited = resource.RLIM_INFINITY
    return HostLimits(
        fd_hard=1 << 20 if hard == unlimited else hard,
        fd_soft=1 << 20 if soft == unlimited else soft,
        ports=high - low + 1,
    )


def source_address(index: int) -> str:
    """The loopback source address of generator process ``index`` (0 -> 127.0.0.2)."""
    if not 0 <= index < MAX_SOURCES:
        raise CapacityError(f"no source address for generator {index} (0..{MAX_SOURCES - 1})")
    return f"127.0.0.{FIRST_SOURCE + index}"


@dataclass(frozen=True)
class GeneratorPlan:
    """Generator processes of one run: connections and source address of each."""

    #: Receiver connections of each receiver process.
    receivers: tuple[int, ...]
    #: Connections of the separate publisher process (0: no such process).
    publisher_connections: int
    #: Source address of each process (receivers first, then the publisher);
    #: None binds nothing (the kernel picks 127.0.0.1).
    sources: tuple[str | None, ...]
    #: Most sockets one generator process may hold on this machine with these settings.
    per_process: int
    #: Most receiver connections these settings allow on this machine.
    max_connections: int
    limits: HostLimits

    @property
    def processes(self) -> int:
        """Generator processes, the publisher process included."""
        return len(self.sources)

    def describe(self) -> str:
        """One line for stderr."""
        srcs = [s for s in self.sources if s is not None]
        where = f"source addresses {srcs[0]}..{srcs[-1]}" if srcs else "source 127.0.0.1"
        pub = (f" + 1 publisher process ({self.publisher_connections} connections)"
               if self.publisher_connections else "")
        return (
            f"{len(self.receivers)} receiver process(es) of <= {max(self.receivers)} "
            f"connections{pub}, {where}; limit {self.max_connections:,} connections "
            f"(fd hard limit {self.limits.fd_hard}, {self.limits.ports} ephemeral ports)"
        )

    def as_dict(self) -> dict[str, Any]:
        """The plan for the JSON report."""
        return {
            "receivers": list(self.receivers),
            "publisher_connections": self.publisher_connections,
            "sources": list(self.sources),
            "per_process": self.per_process,
            "max_connections": self.max_connections,
            "fd_hard": self.limits.fd_hard,
            "fd_soft": self.limits.fd_soft,
            "ephemeral_ports": self.limits.ports,
        }


def plan_generators(
    connections: int,
    *,
    publisher_connections: int,
    per_generator: int,
    generators: int,
    source_addrs: str,
    limits: HostLimits,
) -> GeneratorPlan:
    """Spread ``connections`` over generator processes and source addresses.

    ``publisher_connections`` > 0 puts that many publisher connections in a process of
    their own; ``generators`` 0 means as few receiver processes as the limits allow;
    ``source_addrs`` is ``auto`` (several addresses above the port share), ``on`` or
    ``off``. Raises :class:`CapacityError` (with the required action) when the run does
    not fit.
    """
    if connections < 1:
        raise CapacityError(f"--connections {connections} must be >= 1. Required action: fix it")
    if per_generator < 1 or generators < 0:
        raise CapacityError(
            "--per-generator must be >= 1 and --generators >= 0. Required action: fix them"
        )
    if source_addrs not in ("auto", "on", "off"):
        raise CapacityError(f"--source-addrs {source_addrs!r}: use auto, on or off")
    fd_room = limits.fd_hard - FD_RESERVE
    if fd_room < 1:
        raise CapacityError(
            f"the hard descriptor limit {limits.fd_hard} leaves no room for sockets. "
            "Required action: raise it (ulimit -Hn, LimitNOFILE=)"
        )
    share = limits.port_share
    pub_proc = 1 if publisher_connections else 0
    total = connections + publisher_connections
    multi = source_addrs == "on" or (source_addrs == "auto" and total > share)
    per_process = min(per_generator, fd_room, share) if multi else min(per_generator, fd_room)
    if source_addrs == "off":
        max_conns = share - publisher_connections
        why = (f"{share:,} connections per source address ({PORT_SHARE:.0%} of "
               f"{limits.ports} ephemeral ports) and --source-addrs off")
        action = "use --source-addrs auto"
    else:
        per_src = min(per_generator, fd_room, share)
        max_conns = (MAX_SOURCES - pub_proc) * per_src
        why = (f"{MAX_SOURCES - pub_proc} source addresses x {per_src:,} sockets per process "
               f"(--per-generator {per_generator}, fd hard limit {limits.fd_hard} - "
               f"{FD_RESERVE}, {share:,} ports per address)")
        action = "raise --per-generator or the hard descriptor limit, or run fewer connections"
    if generators:
        max_conns = min(max_conns, generators * per_process)
    if connections > max_conns:
        raise CapacityError(
            f"--connections {connections:,} is above the limit {max_conns:,} of this machine: "
            f"{why}" + (f", --generators {generators}" if generators else "")
            + f". Required action: {action}"
            + (" or raise --generators" if generators else "")
        )
    g = generators or math.ceil(connections / per_process)
    if multi and g + pub_proc > MAX_SOURCES:
        raise CapacityError(
            f"{g + pub_proc} generator processes need more than the {MAX_SOURCES} source "
            "addresses 127.0.0.2..127.0.0.254. Required action: lower --generators"
        )
    base, extra = divmod(connections, g)
    receivers = tuple(base + (1 if i < extra else 0) for i in range(g))
    processes = g + pub_proc
    sources = tuple(source_address(i) if multi else None for i in range(processes))
    return GeneratorPlan(receivers, publisher_connections, sources, per_process, max_conns,
                         limits)


def server_fd_problem(label: str, connections: int, processes: int,
                      limits: HostLimits) -> str | None:
    """Why a spawned server of ``processes`` processes cannot hold ``connections``.

    The spawned server (or peer) inherits the harness's soft descriptor limit; even an
    even spread needs ``ceil(connections / processes) + FD_RESERVE`` per process.
    None when it fits.
    """
    need = math.ceil(connections / max(1, processes)) + FD_RESERVE
    if need <= limits.fd_soft:
        return None
    if limits.fd_soft < limits.fd_hard:
        action = f"raise `ulimit -n` (up to {limits.fd_hard}) before running the harness"
    else:
        action = "raise the hard descriptor limit (ulimit -Hn as root, LimitNOFILE=)"
    if label.startswith("rtserver") and limits.fd_soft > FD_RESERVE:
        action += f", or use --workers {math.ceil(connections / (limits.fd_soft - FD_RESERVE))}"
    return (
        f"{label}: {connections:,} connections over {processes} server process(es) need "
        f"about {need:,} descriptors per process, above the soft limit {limits.fd_soft} it "
        f"inherits (hard {limits.fd_hard}). Required action: {action}"
    )


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    Called by each generator process for its ``needed`` descriptors (sockets plus
    :data:`FD_RESERVE`); exits with the required action when the hard limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if needed > soft:
        raise SystemExit(
            f"this generator needs {needed} descriptors but RLIMIT_NOFILE allows {soft}. "
            "Required action: lower --per-generator"
        )
    return soft
