"""The probe datagram codec: what it accepts, what it drops and why, and that no input
makes it raise or accept a forgery (hypothesis: random bytes, bit flips, truncation).
No check depends on the clocks of sender or receiver: a datagram stamped hours off is
accepted, each (epoch, seq) at most once."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshha.probes import wire
from meshha.probes.wire import Decoder, Drop, Message, SeqCounter, WireError, encode, new_epoch

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_700_000_000.0
SRC = ("127.0.0.2", 4000)


EPOCH = 0x1234_5678_9ABC_DEF0


def _pkt(msg=None, *, seq=1, sender="host1", now=NOW, key=KEY, epoch=EPOCH):
    return encode(
        msg or {"t": "ping", "id": 7}, key=key, sender=sender, seq=seq, now=now, epoch=epoch
    )


def _decoder(**kw):
    kw.setdefault("senders", {"host1": "127.0.0.2", "host2": None})
    return Decoder(KEY, **kw)


def test_round_trip():
    d = _decoder()
    got = d.decode(_pkt({"t": "ack", "id": 3, "via": "host2"}, seq=42), SRC)
    assert got == Message("host1", EPOCH, 42, NOW, {"t": "ack", "id": 3, "via": "host2"}, SRC)
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
    assert d.decode(data, SRC).reason == reason
    assert d.drops == {reason: 1}


def test_unknown_sender_and_bad_source():
    d = _decoder()
    assert d.decode(_pkt(sender="intruder"), SRC).reason == "unknown_sender"
    assert d.decode(_pkt(sender="host1"), ("127.0.0.9", 4000)).reason == "bad_source"
    assert isinstance(d.decode(_pkt(sender="host2"), ("127.0.0.9", 1)), Message)


def test_a_wrong_clock_is_never_a_drop():
    """The sender's timestamp is carried (for measuring skew), never checked."""
    d = _decoder()
    for seq, ts in enumerate((NOW - 300.0, NOW + 300.0, 0.0, NOW + 86400 * 365), 1):
        got = d.decode(_pkt(now=ts, seq=seq), SRC)
        assert isinstance(got, Message) and got.ts == ts
    assert not d.drops


def test_each_epoch_has_its_window_and_a_restart_is_a_new_epoch():
    d = _decoder()
    old, new = new_epoch(), new_epoch()
    assert old != new
    for seq in range(5):
        assert isinstance(d.decode(_pkt(seq=seq, epoch=old), SRC), Message)
    # The sender restarts: its seq starts again at 0 in the new epoch, and is heard.
    for seq in range(5):
        assert isinstance(d.decode(_pkt(seq=seq, epoch=new), SRC), Message)
    # Replays of either run are dropped while their epoch is remembered.
    assert d.decode(_pkt(seq=3, epoch=old), SRC).reason == "replay"
    assert d.decode(_pkt(seq=3, epoch=new), SRC).reason == "replay"
    assert d.epochs_seen == 2


def test_a_replayed_old_epoch_never_locks_out_the_live_one():
    """However many old epochs a replayer cycles through, the live sender is heard."""
    d = _decoder(epochs_per_sender=2)
    live = new_epoch()
    for k in range(50):
        assert isinstance(d.decode(_pkt(seq=k % 3, epoch=1000 + k), SRC), Message | Drop)
        assert isinstance(d.decode(_pkt(seq=k + 1, epoch=live), SRC), Message), k


def test_replay_window_accepts_reordering_once():
    d = _decoder(window=8)
    for seq in (10, 12, 11, 20, 14, 13):
        assert isinstance(d.decode(_pkt(seq=seq), SRC), Message), seq
    for seq in (10, 12, 11, 20, 14):  # exact replays
        assert d.decode(_pkt(seq=seq), SRC).reason == "replay", seq
    assert d.decode(_pkt(seq=12), SRC).reason == "replay"  # 20-12 = 8: left window
    assert isinstance(d.decode(_pkt(seq=15), SRC), Message)  # still inside, unseen
    assert isinstance(d.decode(_pkt(seq=1000), SRC), Message)  # big jump
    assert isinstance(d.decode(_pkt(seq=999), SRC), Message)  # reordered, in window
    assert d.drops["replay"] == 6


def test_windows_are_per_sender():
    d = _decoder()
    assert isinstance(d.decode(_pkt(sender="host1", seq=5), SRC), Message)
    assert isinstance(d.decode(_pkt(sender="host2", seq=5), SRC), Message)


def test_forgery_does_not_move_window():
    d = _decoder()
    assert isinstance(d.decode(_pkt(seq=5), SRC), Message)
    forged = bytearray(_pkt(seq=10**9))
    forged[-1] ^= 1
    assert d.decode(bytes(forged), SRC).reason in ("bad_mac", "malformed")
    assert isinstance(d.decode(_pkt(seq=6), SRC), Message)


def test_seq_counter_counts_from_zero():
    c = SeqCounter()
    assert [c.next() for _ in range(3)] == [0, 1, 2]


def test_old_format_without_epoch_is_malformed():
    import msgpack

    payload = msgpack.packb(["host1", 5, NOW, {"t": "ping", "id": 1}])
    data = wire.MAGIC + wire._mac(KEY, payload) + payload
    assert _decoder().decode(data, SRC).reason == "malformed"


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
        got = _decoder().decode(data, addr)
        assert isinstance(got, Message) and got.src_addr[0] == "127.0.0.2"


# ---- fuzzing -----------------------------------------------------------------------

msgs = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(), st.none()),
    max_size=6,
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=1400))
def test_random_bytes_never_raise_never_accepted(data):
    got = _decoder(senders=None).decode(data, SRC)
    assert isinstance(got, Drop) and got.reason in wire.DROP_REASONS


@FUZZ
@given(msgs, st.integers(0, 2**64 - 1), st.data())
def test_bit_flips_are_rejected(msg, seq, data):
    pkt = bytearray(_pkt(msg, seq=seq))
    flips = data.draw(st.sets(st.integers(0, len(pkt) * 8 - 1), min_size=1, max_size=8))
    for bit in flips:
        pkt[bit // 8] ^= 1 << (bit % 8)
    got = _decoder(senders=None).decode(bytes(pkt), SRC)
    assert isinstance(got, Drop), got
    assert got.reason in ("malformed", "bad_mac", "too_short")


@FUZZ
@given(msgs, st.data())
def test_truncation_and_extension_rejected(msg, data):
    pkt = _pkt(msg)
    cut = data.draw(st.integers(0, len(pkt) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    d = _decoder(senders=None)
    assert isinstance(d.decode(pkt[:cut], SRC), Drop)
    assert isinstance(d.decode(pkt + extra, SRC), Drop)
    assert isinstance(d.decode(pkt, SRC), Message)


@FUZZ
@given(st.binary(max_size=1100))
def test_authenticated_garbage_payload_never_raises(payload):
    """Someone with the key sending nonsense (a bug elsewhere) is dropped, not a crash."""
    data = wire.MAGIC + wire._mac(KEY, payload) + payload
    got = _decoder(senders=None).decode(data, SRC)
    assert isinstance(got, Drop | Message)
    if isinstance(got, Message):
        assert isinstance(got.msg, dict) and isinstance(got.sender, str)


@FUZZ
@given(st.lists(st.integers(0, 300), min_size=1, max_size=80), st.integers(1, 64))
def test_window_accepts_each_seq_at_most_once(seqs, window):
    d = _decoder(senders=None, window=window)
    accepted = [s for s in seqs if isinstance(d.decode(_pkt(seq=s), SRC), Message)]
    assert len(accepted) == len(set(accepted))
    top = 0
    for s in seqs:  # every new maximum is always accepted
        if s > top:
            assert s in accepted
            top = s
