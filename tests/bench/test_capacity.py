"""The generator plan: processes and source addresses from the fd and port limits."""

from __future__ import annotations

import pytest

from rtserver.bench.capacity import (
    FD_RESERVE,
    MAX_SOURCES,
    CapacityError,
    GeneratorPlan,
    HostLimits,
    host_limits,
    plan_generators,
    server_fd_problem,
)

# This machine's kind: hard limit 20,000 descriptors, the default 32768-60999 port range.
HOST = HostLimits(fd_hard=20_000, fd_soft=20_000, ports=28_232)


def plan(n: int, *, pubs: int = 1, per: int = 15_000, gens: int = 0, src: str = "auto",
         limits: HostLimits = HOST) -> GeneratorPlan:
    return plan_generators(n, publisher_connections=pubs, per_generator=per, generators=gens,
                           source_addrs=src, limits=limits)


def test_100k_connections_take_seven_processes_on_seven_addresses_plus_the_publisher() -> None:
    p = plan(100_000)
    assert len(p.receivers) == 7 and sum(p.receivers) == 100_000
    assert max(p.receivers) <= 15_000 and max(p.receivers) - min(p.receivers) <= 1
    # receivers on 127.0.0.2..8, the publisher process on 127.0.0.9
    assert p.sources == tuple(f"127.0.0.{i}" for i in range(2, 10))
    assert p.processes == 8 and p.publisher_connections == 1
    assert p.max_connections == (MAX_SOURCES - 1) * 15_000


def test_the_fd_hard_limit_bounds_a_process() -> None:
    low = HostLimits(fd_hard=4_096, fd_soft=1_024, ports=28_232)
    p = plan(100_000, limits=low)
    assert p.per_process == 4_096 - FD_RESERVE
    assert len(p.receivers) == 25 and max(p.receivers) <= p.per_process
    assert len(set(p.sources)) == 26


def test_one_source_address_up_to_the_port_share() -> None:
    share = HOST.port_share
    assert share == 25_408
    small = plan(share - 1)
    assert small.sources == (None, None, None)  # 2 receiver processes + publisher, 127.0.0.1
    big = plan(share)
    assert all(s is not None for s in big.sources)
    with pytest.raises(CapacityError, match="--source-addrs auto"):
        plan(share, src="off")
    assert plan(200, src="on").sources == ("127.0.0.2", "127.0.0.3")


def test_no_separate_publisher_process_for_closed_loop_runs() -> None:
    p = plan(100_000, pubs=0)
    assert p.processes == 7 and p.publisher_connections == 0
    assert p.max_connections == MAX_SOURCES * 15_000


def test_limits_are_explicit_errors() -> None:
    with pytest.raises(CapacityError, match="above the limit 3,780,000"):
        plan(3_780_001)
    assert sum(plan(3_780_000).receivers) == 3_780_000
    with pytest.raises(CapacityError, match="raise --generators"):
        plan(100_000, gens=2)
    with pytest.raises(CapacityError, match=">= 1"):
        plan(0)
    exact = plan(30_000, gens=3)
    assert exact.receivers == (10_000, 10_000, 10_000)


def test_a_spawned_server_needs_descriptors_for_its_share() -> None:
    assert server_fd_problem("rtserver", 30_000, 2, HOST) is None
    problem = server_fd_problem("rtserver", 100_001, 2, HOST)
    assert problem is not None and "--workers 6" in problem and "hard descriptor" in problem
    soft = HostLimits(fd_hard=20_000, fd_soft=1_024, ports=28_232)
    peer = server_fd_problem("naive", 2_000, 1, soft)
    assert peer is not None and "--workers" not in peer and "up to 20000" in peer


def test_this_machine_has_readable_limits() -> None:
    limits = host_limits()
    assert limits.fd_hard >= limits.fd_soft > FD_RESERVE
    assert limits.ports > 1_000
