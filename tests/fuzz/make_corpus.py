"""Regenerate the seed corpus: ``python tests/fuzz/make_corpus.py`` (writes
``tests/fuzz/corpus/<target>/seed-NNN``). Deterministic; crash inputs found by a
fuzzer are added next to the seeds as ``crash-<name>`` and kept."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from pathlib import Path

from rtserver.bus import wire

SECRET = "fuzz-secret-0123456789abcdef-0123456789abcdef"
NOW = 1_900_000_000
CORPUS = Path(__file__).with_name("corpus")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hs256(claims: dict[str, object], header: dict[str, object] | None = None) -> str:
    head = _b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def seeds() -> dict[str, list[bytes]]:
    user = str(uuid.UUID(int=1))
    deep = "[" * 40 + "]" * 40
    frames = [
        '{"type":"ping","id":1}', '{"type":"ping","id":"x"}',
        '{"type":"subscribe","room":"bench:r","id":2}', '{"type":"unsubscribe","room":"bench:r"}',
        '{"type":"publish","room":"bench:r","data":{"a":[1,2.5,"x",null,true]},"id":3}',
        '{"type":"presence","room":"quote:q1"}', '{"type":"auth","token":"a.b.c"}',
        '{"type":"publish","room":"bench:r","data":' + deep + "}",
        '{"type":"ping","id":' + "9" * 30 + "}", '{"type":"ping","id":1e400}',
        '{"type":"ping","id":"\\ud800"}', '[1,2]', '{"type":"nope"}', '{"type":"ping","x":1}',
        '{"type":"subscribe","room":5}', '{', '{"type":"quote_edit","quote_id":"q","field":'
        '"vehicle_year","value":99999999999999999999}',
        '{"type":"notifications_list","limit":-1}',
    ]
    session = [
        b"A" + b"\x00".join(f.encode() for f in frames),
        b"\x00".join(f.encode() for f in frames),
        b"A" + b"\x00".join([b'{"type":"bad"}'] * 40),
        b"\x01\x00\xff\x00" + frames[0].encode(),
    ]
    tokens = [
        _hs256({"sub": user, "exp": NOW + 60, "iat": NOW, "perms": ["p"]}),
        _hs256({"sub": user, "exp": NOW - 60}),
        _hs256({"sub": user, "exp": 1e300}),
        _hs256({"sub": user, "exp": NOW + 60, "aud": "x"}),
        _hs256({"sub": user, "exp": NOW + 60}, {"alg": "none"}),
        _hs256({"sub": "not-a-uuid", "exp": NOW + 60}),
        _hs256({"sub": user, "exp": NOW + 60, "iat": NOW + 3600}),
        _hs256({"sub": user, "exp": NOW + 60}) + "=",
        "", "a.b.c", "....", "eyJ.eyJ.",
    ]
    bus = [
        wire.encode(wire.K_PUB, 0, 7, "bench:r", b'{"x":1}'),
        wire.encode(wire.K_ACK, 3, 9),
        wire.encode(wire.K_USER, 0, 0, "u\u00e9", b"payload") * 3,
        b"\x00\x00\x00\x0f" + b"\x22" + b"\x00" * 12 + b"\xff\xff",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x11\x22" + b"\x00" * 12 + b"\x00\x02\xc3\x28",
    ]
    ingress = [
        b'{"type":"room_publish","room":"quote:q","data":{"a":1}}',
        b'{"type":"user_notify","user":"u","title":"t","body":"b","notification_id":3}',
        b'{"type":"quote_update","quote_id":"' + user.encode()
        + b'","update_type":"x","data":{},"version":1}',
        b'{"type":"calculation_progress","quote_id":"' + user.encode()
        + b'","progress":0.5,"stage":"s"}',
        b'{"type":"analytics_event","event":"quote_created"}',
        b'{"type":"alert","alert_type":"a","severity":"high","message":"m"}',
        b'{"type":"room_publish","room":"quote:q","data":' + (b"[" * 5000) + b"}",
        b'{"type":"room_publish","room":"q","data":' + deep.encode() + b"}",
        b"\xff\xfe", b"[]",
    ]
    fanout = [b"", b"x", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536, bytes(range(256))]
    return {"frame_decoder": [f.encode() for f in frames], "session": session,
            "token": [t.encode() for t in tokens], "bus_wire": bus, "ingress": ingress,
            "fanout_framing": fanout}


def main() -> None:
    for target, items in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for i, data in enumerate(items):
            (folder / f"seed-{i:03d}").write_bytes(data)


if __name__ == "__main__":
    main()
