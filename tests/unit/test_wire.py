"""The probe datagram codec: what it accepts, what it drops and why, and that no input
makes it raise or accept a forgery (hypothesis: random bytes, bit flips, truncation)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshha.probes import wire
from meshha.probes.wire import Decoder, Drop, Message, SeqCounter, WireError, encode

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_700_000_000.0
SRC = ("127.0.0.2", 4000)


def _pkt(msg=None, *, seq=1, sender="host1", now=NOW, key=KEY):
    return encode(msg or {"t": "ping", "id": 7}, key=key, sender=sender, seq=seq, now=now)


def _decoder(**kw):
    kw.setdefault("senders", {"host1": "127.0.0.2", "host2": None})
    return Decoder(KEY, max_age_s=5.0, **kw)


def test_round_trip():
    d = _decoder()
    got = d.decode(_pkt({"t": "ack", "id": 3, "via": "host2"}, seq=42), SRC, NOW + 0.1)
    assert got == Message("host1", 42, NOW, {"t": "ack", "id": 3, "via": "host2"}, SRC)
    assert d.accepted == 1 and not d.drops


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (wire.MAGIC + b"x" * 32, "too_short"),
        (b"x" * 1201, "oversize"),
        (b"GET / HTTP/1.1\r\n" + b"x" * 40, "malformed"),
        (_pkt(key=OTHER_KEY), "bad_mac"),
    ],
)
def test_drop_reasons_before_auth(data, reason):
    d = _decoder()
    assert d.decode(data, SRC, NOW).reason == reason
    assert d.drops == {reason: 1}


def test_unknown_sender_and_bad_source():
    d = _decoder()
    assert d.decode(_pkt(sender="intruder"), SRC, NOW).reason == "unknown_sender"
    assert d.decode(_pkt(sender="host1"), ("127.0.0.9", 4000), NOW).reason == "bad_source"
    assert isinstance(d.decode(_pkt(sender="host2"), ("127.0.0.9", 1), NOW), Message)


def test_stale_both_ways():
    d = _decoder()
    assert d.decode(_pkt(now=NOW - 5.1), SRC, NOW).reason == "stale"
    assert d.decode(_pkt(now=NOW + 5.1, seq=2), SRC, NOW).reason == "stale"
    assert isinstance(d.decode(_pkt(now=NOW - 4.9, seq=3), SRC, NOW), Message)


def test_replay_window_accepts_reordering_once():
    d = _decoder(window=8)
    for seq in (10, 12, 11, 20, 14, 13):
        assert isinstance(d.decode(_pkt(seq=seq), SRC, NOW), Message), seq
    for seq in (10, 12, 11, 20, 14):  # exact replays
        assert d.decode(_pkt(seq=seq), SRC, NOW).reason == "replay", seq
    assert d.decode(_pkt(seq=12), SRC, NOW).reason == "replay"  # 20-12 = 8: left window
    assert isinstance(d.decode(_pkt(seq=15), SRC, NOW), Message)  # still inside, unseen
    assert isinstance(d.decode(_pkt(seq=1000), SRC, NOW), Message)  # big jump
    assert isinstance(d.decode(_pkt(seq=999), SRC, NOW), Message)  # reordered, in window
    assert d.drops["replay"] == 6


def test_windows_are_per_sender():
    d = _decoder()
    assert isinstance(d.decode(_pkt(sender="host1", seq=5), SRC, NOW), Message)
    assert isinstance(d.decode(_pkt(sender="host2", seq=5), SRC, NOW), Message)


def test_forgery_does_not_move_window():
    d = _decoder()
    assert isinstance(d.decode(_pkt(seq=5), SRC, NOW), Message)
    forged = bytearray(_pkt(seq=10**9))
    forged[-1] ^= 1
    assert d.decode(bytes(forged), SRC, NOW).reason in ("bad_mac", "malformed")
    assert isinstance(d.decode(_pkt(seq=6), SRC, NOW), Message)


def test_seq_counter_survives_restart():
    before = SeqCounter(NOW)
    seqs = [before.next() for _ in range(100)]
    after_restart = SeqCounter(NOW + 1.0)
    d = _decoder()
    for s in seqs:
        assert isinstance(d.decode(_pkt(seq=s), SRC, NOW), Message)
    assert isinstance(d.decode(_pkt(seq=after_restart.next()), SRC, NOW + 1), Message)


def test_encode_refuses_oversize_and_short_keys():
    with pytest.raises(WireError) as e:
        encode({"pad": "x" * 2000}, key=KEY, sender="h", seq=1, now=NOW)
    assert e.value.kind == "oversize"
    with pytest.raises(WireError):
        Decoder(b"short")


def test_over_real_udp_socket():
    """Loopback UDP: the codec's bytes survive a real datagram socket."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        tx.bind(("127.0.0.2", 0))
        tx.sendto(_pkt(seq=9), rx.getsockname())
        data, addr = rx.recvfrom(65535)
        got = _decoder().decode(data, addr, NOW)
        assert isinstance(got, Message) and got.src_addr[0] == "127.0.0.2"


# ---- fuzzing -----------------------------------------------------------------------

msgs = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(), st.none()),
    max_size=6,
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=1400), st.floats(allow_nan=True, allow_infinity=True))
def test_random_bytes_never_raise_never_accepted(data, now):
    got = _decoder(senders=None).decode(data, SRC, now)
    assert isinstance(got, Drop) and got.reason in wire.DROP_REASONS


@FUZZ
@given(msgs, st.integers(0, 2**64 - 1), st.data())
def test_bit_flips_are_rejected(msg, seq, data):
    pkt = bytearray(_pkt(msg, seq=seq))
    flips = data.draw(st.sets(st.integers(0, len(pkt) * 8 - 1), min_size=1, max_size=8))
    for bit in flips:
        pkt[bit // 8] ^= 1 << (bit % 8)
    got = _decoder(senders=None).decode(bytes(pkt), SRC, NOW)
    assert isinstance(got, Drop), got
    assert got.reason in ("malformed", "bad_mac", "too_short")


@FUZZ
@given(msgs, st.data())
def test_truncation_and_extension_rejected(msg, data):
    pkt = _pkt(msg)
    cut = data.draw(st.integers(0, len(pkt) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    d = _decoder(senders=None)
    assert isinstance(d.decode(pkt[:cut], SRC, NOW), Drop)
    assert isinstance(d.decode(pkt + extra, SRC, NOW), Drop)
    assert isinstance(d.decode(pkt, SRC, NOW), Message)


@FUZZ
@given(st.binary(max_size=1100))
def test_authenticated_garbage_payload_never_raises(payload):
    """Someone with the key sending nonsense (a bug elsewhere) is dropped, not a crash."""
    data = wire.MAGIC + wire._mac(KEY, payload) + payload
    got = _decoder(senders=None).decode(data, SRC, NOW)
    assert isinstance(got, Drop | Message)
    if isinstance(got, Message):
        assert isinstance(got.msg, dict) and isinstance(got.sender, str)


@FUZZ
@given(st.lists(st.integers(0, 300), min_size=1, max_size=80), st.integers(1, 64))
def test_window_accepts_each_seq_at_most_once(seqs, window):
    d = _decoder(senders=None, window=window)
    accepted = [s for s in seqs if isinstance(d.decode(_pkt(seq=s), SRC, NOW), Message)]
    assert len(accepted) == len(set(accepted))
    top = 0
    for s in seqs:  # every new maximum is always accepted
        if s > top:
            assert s in accepted
            top = s
