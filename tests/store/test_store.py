"""Store queries against a real PostgreSQL: notifications, quotes, analytics, admin, alerts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from rtserver.store import (
    QuoteNotFound,
    Store,
    StoreUnavailable,
    UpdateApplied,
    UpdateConflict,
    decode_json,
)
from rtserver.store.models import ConnectionRow
from tests.store import pgutil
from tests.store.pgutil import free_port, make_store

pytestmark = pytest.mark.timeout(60)


def _user() -> str:
    return f"user-{uuid.uuid4()}"


# ---------------------------------------------------------------- notifications


async def test_notifications_pending_until_received(store: Store) -> None:
    user, other = _user(), _user()
    created = [
        await store.create_notification(user, f"t{i}", f"b{i}", {"n": i}) for i in range(5)
    ]
    await store.create_notification(other, "other", "x", {})
    pending = await store.pending_notifications(user, limit=100)
    assert [n.id for n in pending] == [n.id for n in created]
    assert [decode_json(n.data) for n in pending] == [{"n": i} for i in range(5)]
    assert all(n.delivered_at is None and n.read_at is None for n in pending)
    # Reading them marks nothing: two connections both get them (at-least-once).
    first, second = await asyncio.gather(store.pending_notifications(user, limit=100),
                                         store.pending_notifications(user, limit=100))
    assert [n.id for n in first] == [n.id for n in second] == [n.id for n in created]

    # Received ones are not pending again; marking twice keeps the first time.
    ids = [created[0].id, created[1].id]
    assert await store.mark_received(user, ids) == ids
    before = await store.get_notification(created[0].id)
    assert before is not None and before.delivered_at is not None
    assert await store.mark_received(user, [created[0].id]) == [created[0].id]
    again = await store.get_notification(created[0].id)
    assert again is not None and again.delivered_at == before.delivered_at
    pending = await store.pending_notifications(user, limit=100)
    assert [n.id for n in pending] == [n.id for n in created[2:]]
    # Another user's ids are not found and not marked.
    others = await pgutil.pending_notifications(store, other, limit=10)
    assert await store.mark_received(user, [others[0].id]) == []
    assert [n.title for n in await pgutil.pending_notifications(store, other, limit=10)] == [
        "other"]


async def test_pending_respects_limit_and_after_id(store: Store) -> None:
    user = _user()
    ids = [(await store.create_notification(user, "t", "b", None)).id for _ in range(3)]
    assert [n.id for n in await store.pending_notifications(user, limit=2)] == ids[:2]
    assert [n.id for n in await store.pending_notifications(user, limit=2,
                                                            after_id=ids[1])] == ids[2:]


async def test_mark_read_is_scoped_to_the_user(store: Store) -> None:
    user, intruder = _user(), _user()
    note = await store.create_notification(user, "hello", "body", {"k": "v"})
    assert await store.mark_read(intruder, note.id) is None
    assert (await store.list_notifications(user, unread_only=True, limit=10,
                                           before_id=None)).items[0].id == note.id
    read = await store.mark_read(user, note.id)
    assert read is not None and read.read_at is not None and read.delivered_at is not None
    again = await store.mark_read(user, note.id)
    assert again is not None and again.read_at == read.read_at
    assert await store.mark_read(user, 2**62) is None
    page = await store.list_notifications(user, unread_only=True, limit=10, before_id=None)
    assert page.items == []


async def test_list_notifications_pages(store: Store) -> None:
    user = _user()
    ids = [(await store.create_notification(user, f"t{i}", "b", {})).id for i in range(5)]
    await store.mark_read(user, ids[1])
    page1 = await store.list_notifications(user, unread_only=False, limit=2, before_id=None)
    assert [n.id for n in page1.items] == [ids[4], ids[3]]
    page2 = await store.list_notifications(user, unread_only=False, limit=2,
                                           before_id=page1.next_before_id)
    assert [n.id for n in page2.items] == [ids[2], ids[1]]
    page3 = await store.list_notifications(user, unread_only=False, limit=2,
                                           before_id=page2.next_before_id)
    assert [n.id for n in page3.items] == [ids[0]]
    assert page3.next_before_id is None
    unread = await store.list_notifications(user, unread_only=True, limit=10, before_id=None)
    assert [n.id for n in unread.items] == [ids[4], ids[3], ids[2], ids[0]]
    # Raw JSON is embedded as is when the Struct is encoded for the wire.
    wire = msgspec.json.decode(msgspec.json.encode(unread.items[0]))
    assert wire["data"] == {} and wire["title"] == "t4"


# ---------------------------------------------------------------- quotes


async def _quote(store: Store, **fields: object) -> uuid.UUID:
    customer = await pgutil.insert_customer(store, email=None, name="c", state="TX")
    quote = await pgutil.insert_quote(store, customer_id=customer.id, state="TX", status="draft",
                                      total_premium=None, fields=fields, created_at=None)
    assert quote.version == 1
    return quote.id


async def test_update_field_and_conflict(store: Store) -> None:
    qid = await _quote(store, driver_age=30)
    result = await store.update_field(qid, "driver_age", 31, base_version=1, updated_by="u1")
    assert result == UpdateApplied(version=2)
    stale = await store.update_field(qid, "driver_age", 40, base_version=1, updated_by="u2")
    assert isinstance(stale, UpdateConflict)
    assert stale.current_version == 2
    assert stale.current_value is not None and decode_json(stale.current_value) == 31
    unset = await store.update_field(qid, "vehicle", "car", base_version=1, updated_by="u2")
    assert isinstance(unset, UpdateConflict) and unset.current_value is None
    result = await store.update_field(qid, "vehicle", {"make": "x"}, base_version=2,
                                      updated_by="u2")
    assert result == UpdateApplied(version=3)
    quote = await store.get_quote(qid)
    assert quote is not None and quote.version == 3 and quote.updated_by == "u2"
    assert decode_json(quote.fields) == {"driver_age": 31, "vehicle": {"make": "x"}}
    missing = uuid.uuid4()
    assert await store.update_field(missing, "x", 1, 1, "u") == QuoteNotFound(missing)
    assert await store.get_quote(missing) is None


async def test_many_racing_editors_one_winner(store: Store) -> None:
    qid = await _quote(store, note="")
    results = await asyncio.gather(*[
        store.update_field(qid, "note", f"editor-{i}", 1, f"editor-{i}") for i in range(8)
    ])
    applied = [r for r in results if isinstance(r, UpdateApplied)]
    assert len(applied) == 1 and applied[0].version == 2
    assert all(isinstance(r, UpdateConflict) and r.current_version == 2
               for r in results if not isinstance(r, UpdateApplied))


async def test_racing_editors_exactly_one_wins(pg_dsn: str) -> None:
    # Two stores = two pools, like two workers.
    a, b = make_store(pg_dsn), make_store(pg_dsn)
    await a.open()
    await b.open()
    try:
        for round_ in range(5):
            qid = await _quote(a, premium_tier="basic")
            results = await asyncio.gather(
                a.update_field(qid, "premium_tier", f"gold-{round_}", 1, "alice"),
                b.update_field(qid, "premium_tier", f"silver-{round_}", 1, "bob"),
            )
            applied = [r for r in results if isinstance(r, UpdateApplied)]
            conflicts = [r for r in results if isinstance(r, UpdateConflict)]
            assert len(applied) == 1 and len(conflicts) == 1
            assert applied[0].version == 2
            # The loser sees the winner's value and version.
            winner_value = f"gold-{round_}" if isinstance(results[0], UpdateApplied) \
                else f"silver-{round_}"
            assert conflicts[0].current_version == 2
            assert conflicts[0].current_value is not None
            assert decode_json(conflicts[0].current_value) == winner_value
            quote = await a.get_quote(qid)
            assert quote is not None and decode_json(quote.fields)["premium_tier"] == winner_value
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- analytics


async def test_quotes_dashboard_and_funnel(fresh_dsn: str) -> None:
    store = make_store(fresh_dsn)
    await store.open()
    try:
        now = datetime.now(UTC)
        c1 = await pgutil.insert_customer(store, email="a@x", name="a", state="TX")
        c2 = await pgutil.insert_customer(store, email="b@x", name="b", state="CA")
        rows = [
            (c1.id, "TX", "draft", None, now - timedelta(minutes=5)),
            (c1.id, "TX", "quoted", 100.0, now - timedelta(hours=1, minutes=5)),
            (c2.id, "CA", "quoted", 300.0, now - timedelta(hours=2, minutes=5)),
            (c2.id, "TX", "converted", 200.0, now - timedelta(hours=3, minutes=5)),
            (c2.id, "NY", "quoted", 999.0, now - timedelta(hours=30)),  # outside 24 h
        ]
        ids = []
        for customer, state, status, premium, created in rows:
            q = await pgutil.insert_quote(store, customer_id=customer, state=state, status=status,
                                          total_premium=premium, fields={}, created_at=created)
            ids.append(q.id)
        converted = await pgutil.set_quote_status(store, ids[1], "converted", total_premium=None,
                                                  set_premium=False, updated_by="svc")
        assert converted is not None and converted.converted_at is not None
        assert converted.version == 2 and converted.total_premium == 100.0

        dash = await store.quotes_dashboard(hours=24, state=None, top_states=2)
        assert dash.total_quotes == 4
        assert dash.unique_customers == 2
        assert dash.average_premium == pytest.approx(200.0)
        assert {s.status: s.count for s in dash.by_status} == {"draft": 1, "quoted": 1,
                                                                "converted": 2}
        assert [(s.state, s.count) for s in dash.top_states] == [("TX", 3), ("CA", 1)]
        assert len(dash.timeline) in (24, 25)
        assert sum(b.count for b in dash.timeline) == 4
        assert sum(b.premium_total for b in dash.timeline) == pytest.approx(600.0)
        hours = [b.hour for b in dash.timeline]
        assert hours == sorted(hours) and all(h.minute == 0 for h in hours)
        assert dash.timeline[-1].hour == now.replace(minute=0, second=0, microsecond=0)
        expected: dict[datetime, tuple[int, float]] = {}
        for _, _, _, premium, created in rows[:4]:
            hour = created.replace(minute=0, second=0, microsecond=0)
            count, total = expected.get(hour, (0, 0.0))
            expected[hour] = (count + 1, total + (premium or 0.0))
        assert {b.hour: (b.count, b.premium_total) for b in dash.timeline if b.count} == expected

        tx = await store.quotes_dashboard(hours=24, state="TX", top_states=5)
        assert tx.total_quotes == 3 and tx.state_filter == "TX"
        wide = await store.quotes_dashboard(hours=48, state=None, top_states=5)
        assert wide.total_quotes == 5 and len(wide.top_states) == 3

        funnel = await store.conversion_funnel(hours=24)
        assert (funnel.created, funnel.priced, funnel.converted) == (4, 3, 2)
        assert funnel.conversion_rate == pytest.approx(0.5)
        assert funnel.priced_rate == pytest.approx(0.75)
        assert funnel.average_hours_to_convert is not None

        with pytest.raises(ValueError, match="Required action"):
            await store.quotes_dashboard(hours=0, state=None, top_states=1)
    finally:
        await store.close()


async def test_empty_dashboard(fresh_dsn: str) -> None:
    store = make_store(fresh_dsn)
    await store.open()
    try:
        dash = await store.quotes_dashboard(hours=1, state=None, top_states=3)
        assert dash.total_quotes == 0 and dash.average_premium is None
        assert dash.by_status == [] and dash.top_states == []
        assert all(b.count == 0 for b in dash.timeline)
        funnel = await store.conversion_funnel(hours=1)
        assert funnel.created == 0 and funnel.conversion_rate is None
    finally:
        await store.close()


# ---------------------------------------------------------------- admin


async def test_admin_activity_filters(store: Store) -> None:
    admin = (await pgutil.create_admin_user(store, email=f"{uuid.uuid4()}@x", name="A",
                                            permissions=["admin:monitor"])).id
    got = await pgutil.get_admin_user(store, admin)
    assert got is not None and got.permissions == ["admin:monitor"]
    first = await store.log_admin_activity(
        admin_user_id=admin, action="login", resource_type=None, resource_id=None,
        status="success", details={}, ip_address="10.1.2.3", user_agent="ua")
    assert first.ip_address == "10.1.2.3"
    await store.log_admin_activity(
        admin_user_id=admin, action="resolve_alert", resource_type="alert", resource_id="7",
        status="success", details={"note": "ok"}, ip_address="::1", user_agent=None)
    await store.log_admin_activity(
        admin_user_id=admin, action="resolve_alert", resource_type="alert", resource_id="8",
        status="denied", details={}, ip_address=None, user_agent=None)
    everything = await store.query_admin_activity(
        admin_user_id=admin, action=None, resource_type=None, status=None, since=None,
        until=None, before_id=None, limit=10)
    assert [a.action for a in everything] == ["resolve_alert", "resolve_alert", "login"]
    resolved = await store.query_admin_activity(
        admin_user_id=admin, action="resolve_alert", resource_type="alert", status="success",
        since=datetime.now(UTC) - timedelta(minutes=5), until=None, before_id=None, limit=10)
    assert [(a.resource_id, a.ip_address) for a in resolved] == [("7", "::1")]
    older = await store.query_admin_activity(
        admin_user_id=admin, action=None, resource_type=None, status=None, since=None,
        until=None, before_id=everything[0].id, limit=1)
    assert [a.id for a in older] == [everything[1].id]
    with pytest.raises(ValueError, match="not an IP address"):
        await store.log_admin_activity(
            admin_user_id=admin, action="x", resource_type=None, resource_id=None,
            status="success", details={}, ip_address="nope", user_agent=None)


async def test_dashboards(store: Store) -> None:
    admin = _user()
    await store.save_dashboard(admin_user_id=admin, dashboard_name="ops",
                               configuration={"widgets": [1]}, is_default=True)
    await store.save_dashboard(admin_user_id=admin, dashboard_name="sales",
                               configuration={"widgets": [2]}, is_default=False)
    saved = await store.save_dashboard(admin_user_id=admin, dashboard_name="sales",
                                       configuration={"widgets": [3]}, is_default=True)
    assert saved.is_default and decode_json(saved.configuration) == {"widgets": [3]}
    listed = await store.list_dashboards(admin)
    assert [(d.dashboard_name, d.is_default) for d in listed] == [("sales", True),
                                                                   ("ops", False)]
    assert await store.list_dashboards(_user()) == []
    assert await pgutil.delete_dashboard(store, admin, "ops") is True
    assert await pgutil.delete_dashboard(store, admin, "ops") is False


async def test_alerts(store: Store) -> None:
    alert = await store.create_alert(alert_type="database", severity="high",
                                     message="db down", details={"dsn": "x"})
    assert not alert.resolved
    assert alert.id in [a.id for a in await store.list_unresolved_alerts(limit=100)]
    with pytest.raises(ValueError, match="severity"):
        await store.create_alert(alert_type="x", severity="urgent", message="m", details={})
    results = await asyncio.gather(store.resolve_alert(alert.id, "admin-1"),
                                   store.resolve_alert(alert.id, "admin-2"))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["already_resolved", "resolved"]
    winner = next(r for r in results if r.outcome == "resolved")
    loser = next(r for r in results if r.outcome == "already_resolved")
    assert winner.alert is not None and loser.alert is not None
    assert loser.alert.resolved and loser.alert.resolved_by == winner.alert.resolved_by
    assert alert.id not in [a.id for a in await store.list_unresolved_alerts(limit=100)]
    assert (await store.resolve_alert(2**62, "a")).outcome == "not_found"
    stored = await pgutil.get_alert(store, alert.id)
    assert stored is not None and stored.resolved_at is not None


# ---------------------------------------------------------------- connections, pool


async def test_connection_rows_upsert(store: Store) -> None:
    cid = f"c-{uuid.uuid4()}"
    t0 = datetime.now(UTC).replace(microsecond=0)
    await store.write_connection_rows([ConnectionRow(
        connection_id=cid, worker=3, user_id="u", ip_address="127.0.0.1", user_agent="ua",
        connected_at=t0, last_activity=t0)])
    await store.write_connection_rows([ConnectionRow(
        connection_id=cid, worker=3, disconnected_at=t0 + timedelta(seconds=5),
        last_activity=t0 - timedelta(seconds=5), close_code=1001, close_reason="going away")])
    record = await pgutil.get_connection(store, cid)
    assert record is not None
    assert (record.user_id, record.ip_address, record.user_agent, record.worker) == (
        "u", "127.0.0.1", "ua", 3)
    assert record.connected_at == t0 and record.last_activity == t0
    assert record.disconnected_at == t0 + timedelta(seconds=5)
    assert (record.close_code, record.close_reason) == (1001, "going away")


async def test_pool_state(store: Store) -> None:
    state = store.pool_state()
    assert state.size >= 1 and state.max_size == 4 and state.in_use == 0
    async with store.acquire("test") as conn:
        assert store.pool_state().in_use == 1
        assert await conn.fetchval("SELECT 1") == 1
    assert store.pool_state().in_use == 0


async def test_unreachable_database_is_explicit() -> None:
    store = make_store(f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                       connect_timeout=2.0)
    with pytest.raises(StoreUnavailable, match="Required action"):
        await store.open()
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()


async def test_list_alerts_filters(store: Store) -> None:
    low = await store.create_alert(alert_type="t", severity="low", message="m", details={})
    crit = await store.create_alert(alert_type="t", severity="critical", message="m",
                                    details=b'{"raw": true}')
    await store.resolve_alert(low.id, "admin")
    recent = await pgutil.list_alerts(store, resolved=None, severity=None, before_id=None, limit=2)
    assert [a.id for a in recent] == [crit.id, low.id]
    assert decode_json(recent[0].details) == {"raw": True}
    unresolved_critical = await pgutil.list_alerts(store, resolved=False, severity="critical",
                                                   before_id=None, limit=100)
    assert crit.id in [a.id for a in unresolved_critical]
    assert low.id not in [a.id for a in unresolved_critical]
    resolved = await pgutil.list_alerts(store, resolved=True, severity=None, before_id=crit.id,
                                        limit=1)
    assert [a.id for a in resolved] == [low.id]


async def test_statement_timeout_is_enforced(pg_dsn: str) -> None:
    store = make_store(pg_dsn, statement_timeout=0.2)
    await store.open()
    try:
        with pytest.raises(StoreUnavailable, match="Required action"):
            async with store.acquire("slow") as conn:
                await conn.fetchval("SELECT pg_sleep(5)")
        await store.ping()  # the pool is still usable
    finally:
        await store.close()


async def test_pool_exhaustion_is_explicit(pg_dsn: str) -> None:
    store = make_store(pg_dsn, pool_min_size=1, pool_max_size=1, pool_acquire_timeout=0.2)
    await store.open()
    try:
        async with store.acquire("hold"):
            assert store.pool_state().in_use == 1
            with pytest.raises(StoreUnavailable, match="get_quote"):
                await store.get_quote(uuid.uuid4())
    finally:
        await store.close()


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="pool sizes"):
        make_store("postgresql://x/y", pool_min_size=5, pool_max_size=2)
    with pytest.raises(ValueError, match="statement_timeout"):
        make_store("postgresql://x/y", statement_timeout=0)
