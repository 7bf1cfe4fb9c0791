"""Figures and the printed table of ``rtserver bench storm`` (see :mod:`rtserver.bench.storm`)."""

from __future__ import annotations

import math
from typing import Any

import orjson

__all__ = ["add_ratios", "print_storms", "storm_summary"]


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def storm_summary(checked: list[dict[str, Any]]) -> dict[str, Any]:
    """One storm's figures from every receiver process's ``checked`` event."""
    back = sorted(x for e in checked for x in e["back_ns"])
    affected = sum(e["affected"] for e in checked)
    need99 = math.ceil(0.99 * affected)
    out: dict[str, Any] = {
        "affected": affected,
        "back": len(back),
        "t99_s": back[need99 - 1] / 1e9 if affected and len(back) >= need99 else None,
        "t100_s": back[-1] / 1e9 if affected and len(back) == affected else None,
        "t50_s": back[len(back) // 2] / 1e9 if back else None,
        "attempts": sum(e["attempts"] for e in checked),
        "attempts_max": max((e["attempts_max"] for e in checked), default=0),
        "relapses": sum(e["relapses"] for e in checked),
        "failed_attempts": _merge([e["failures"] for e in checked]),
        "closes": _merge([e["closes"] for e in checked]),
        "server_errors": _merge([e["server_errors"] for e in checked]),
        "recovered": sum(e["recovered"] for e in checked),
        "replayed": sum(e["replayed"] for e in checked),
        "not_recovered": _merge([e["not_recovered"] for e in checked]),
        "explicit_skipped": sum(e["explicit_skipped"] for e in checked),
        "lost": sum(e["lost"] for e in checked),
        "behind_at_check": sum(e["behind"] for e in checked),
        "duplicates": sum(e["duplicates"] for e in checked),
        "out_of_order": sum(e["out_of_order"] for e in checked),
        "payload_repeats": sum(e["payload_repeats"] for e in checked),
        "acked_not_delivered_before_epoch_change": sum(
            e["acked_not_delivered_before_epoch_change"] for e in checked),
        "generator_cpu_pct": [round(e["cpu_pct"], 1) for e in checked],
    }
    out["failed_attempts_total"] = sum(out["failed_attempts"].values())
    return out


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS: list[tuple[str, Any]] = [
    ("clients disconnected", lambda s: s["affected"]),
    ("back (subscribed, recovered)", lambda s: s["back"]),
    ("time to 50% back (s)", lambda s: s["t50_s"]),
    ("time to 99% back (s)", lambda s: s["t99_s"]),
    ("time to 100% back (s)", lambda s: s["t100_s"]),
    ("server restarted, listening (s)", lambda s: s.get("server_listening_s")),
    ("reconnect attempts", lambda s: s["attempts"]),
    ("attempts, most by one client", lambda s: s["attempts_max"]),
    ("failed attempts", lambda s: s["failed_attempts_total"]),
    ("recovered:true", lambda s: s["recovered"]),
    ("  messages replayed", lambda s: s["replayed"]),
    ("recovered:false (explicit)", lambda s: sum(s["not_recovered"].values())),
    ("lost inside the window", lambda s: s["lost"]),
    ("duplicates / out of order", lambda s: f"{s['duplicates']} / {s['out_of_order']}"),
    ("payload repeats (n again)", lambda s: s["payload_repeats"]),
    ("acked, not delivered, new epoch", lambda s: s["acked_not_delivered_before_epoch_change"]),
    ("server CPU during storm (s)", lambda s: s["server_cpu_s"]),
    ("server CPU (% of one core)", lambda s: s["server_cpu_pct"]),
    ("peak handshakes in progress", lambda s: s["handshakes"]["peak_sampled"]),
    ("  per-worker max (server gauge)",
     lambda s: "/".join(f"{v:g}" for _k, v in sorted(s["handshakes"]["worker_max"].items()))
     or None),
    ("kernel: listen queue overflows", lambda s: s.get("kernel_tcp", {}).get("ListenOverflows")),
    ("kernel: SYN retransmits", lambda s: s.get("kernel_tcp", {}).get("TCPSynRetrans")),
    ("receiver generator CPU, max (%)", lambda s: max(s["generator_cpu_pct"], default=None)),
]

#: Ratios full/none printed per fault: (label, key in the storm dict).
RATIOS = [("time to 99% back", "t99_s"), ("time to 100% back", "t100_s"),
          ("reconnect attempts", "attempts"), ("failed attempts", "failed_attempts_total"),
          ("server CPU", "server_cpu_s")]


def _peak(s: dict[str, Any]) -> float:
    return float(s["handshakes"]["peak_sampled"])


def ratios(storms: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per fault measured with both jitter modes: full / none of each headline figure."""
    out: dict[str, dict[str, float | None]] = {}
    for fault in dict.fromkeys(s["fault"] for s in storms):
        full = next((s for s in storms if s["fault"] == fault and s["jitter"] == "full"), None)
        none = next((s for s in storms if s["fault"] == fault and s["jitter"] == "none"), None)
        if full is None or none is None:
            continue
        r: dict[str, float | None] = {}
        for _label, key in RATIOS:
            a, b = full.get(key), none.get(key)
            r[key] = a / b if a is not None and b else None
        r["peak_handshakes"] = _peak(full) / _peak(none) if _peak(none) else None
        out[fault] = r
    return out


def add_ratios(doc: dict[str, Any]) -> None:
    """``doc["ratios"]`` (full / none per fault) and ``doc["vs"]["ratios"]`` (rtserver / peer
    time to all subscribed), from the figures of this run."""
    doc["ratios"] = ratios(doc["storms"])
    vs = doc.get("vs")
    if not vs:
        return
    rt = (vs.get("rtserver-connect") or {}).get("time_to_all_subscribed_s")
    vs["ratios"] = {}
    for name, v in vs.items():
        if name not in ("rtserver-connect", "ratios") and isinstance(v, dict):
            other = v.get("time_to_all_subscribed_s")
            if rt and other:
                vs["ratios"][name] = rt / other


def print_storms(doc: dict[str, Any]) -> None:
    """The table (storms side by side), ratios, failure reasons, the connect comparison."""
    storms = doc["storms"]
    print(f"rtserver bench storm  connections={doc['connections']}  rooms={doc['rooms']} of "
          f"{doc['room_size']}  room_rate={doc['room_rate']:g}/s  workers={doc['workers']}  "
          f"history_size={doc['history_size']}  backoff {doc['backoff']['min']:g}.."
          f"{doc['backoff']['max']:g} s  started={doc['started']}")
    heads = [f"{s['fault']}/{s['jitter']}" for s in storms]
    width = max(12, *(len(h) + 2 for h in heads))
    print(f"{'':<34}" + "".join(f"{h:>{width}}" for h in heads))
    for label, fn in ROWS:
        print(f"{label:<34}" + "".join(f"{_f(fn(s)):>{width}}" for s in storms))
    for fault, r in doc["ratios"].items():
        print()
        print(f"{fault}: full jitter / no jitter (below 1: full jitter is better)")
        for label, key in [*RATIOS, ("peak handshakes", "peak_handshakes")]:
            print(f"  {label:<32}{_f(r.get(key), 3):>10}")
    for s in storms:
        print()
        print(f"{s['fault']}/{s['jitter']}: closes at the fault "
              f"{orjson.dumps(s['closes']).decode()}")
        print(f"  failed attempts by reason {orjson.dumps(s['failed_attempts']).decode()}")
        print(f"  recovered:false by reason {orjson.dumps(s['not_recovered']).decode()}")
        if s["server_errors"]:
            print(f"  error frames {orjson.dumps(s['server_errors']).decode()}")
        if s["handshakes"]["scrape_failures"]:
            print(f"  /metrics scrapes {s['handshakes']['scrapes']}, failed "
                  f"{orjson.dumps(s['handshakes']['scrape_failures']).decode()}")
        if not s["ok"]:
            print(f"  FAIL: all back {s['all_back']}, lost {s['lost']}, duplicates "
                  f"{s['duplicates']}, out of order {s['out_of_order']}, behind at the check "
                  f"{s['behind_at_check']}")
    vs = doc.get("vs")
    if vs:
        print()
        print(f"connect part: {vs['connections']} clients connecting at once (connect-storm)")
        for name, v in vs.items():
            if isinstance(v, dict) and "time_to_all_subscribed_s" in v:
                print(f"  {name:<20} all subscribed in {_f(v['time_to_all_subscribed_s'], 3)} s"
                      f"  connected {v['connected']}  failed {v['connect_failed']}")
        for name, ratio in vs.get("ratios", {}).items():
            print(f"  rtserver / {name} time to all subscribed: {ratio:.3f} (below 1: rtserver "
                  "is faster)")
        for name, why in vs.get("skipped", {}).items():
            print(f"  peer {name} skipped: {why}")
    print()
    for s in storms:
        print(f"{'PASS' if s['ok'] else 'FAIL'}  {s['fault']}/{s['jitter']}")
    print(orjson.dumps({"scenario": "storm", "ok": doc["ok"], "storms": {
        f"{s['fault']}/{s['jitter']}": {k: s.get(k) for k in (
            "affected", "t99_s", "t100_s", "attempts", "lost", "recovered",
            "server_cpu_s")} | {"peak_handshakes": _peak(s),
                                "not_recovered": sum(s["not_recovered"].values())}
        for s in storms}, "ratios": doc["ratios"]}).decode())
