"""The authenticated datagram codec for UDP probes.

A datagram is::

    MAGIC (4 bytes: b"MHP" + version) | HMAC-SHA256 (32 bytes) | payload (msgpack)

with the MAC computed over MAGIC + payload under the segment's probe key, and the payload
the msgpack array ``[sender, epoch, seq, ts, msg]``. A decoder accepts a datagram only if:

1. its size is within ``[MIN_DATAGRAM_B, max_datagram_b]`` (``too_short`` / ``oversize``),
2. the magic and version match and the MAC verifies (``malformed`` / ``bad_mac``), checked
   with `hmac.compare_digest` before anything else of the payload is parsed,
3. the payload parses to the expected shape (``malformed``),
4. the sender is one it knows, from the address it knows (``unknown_sender`` /
   ``bad_source``),
5. ``(epoch, seq)`` is new: inside the sender's epoch, above the highest seq seen, or
   inside the sliding window of the last ``window`` numbers and not yet seen (``replay``),
   as in IPsec/WireGuard. The window is updated only after every other check passed, so
   forgeries never move it.

No check reads a clock. ``ts`` is the sender's wall clock when it sent the datagram; it is
carried only so that a receiver can *measure* how far the sender's clock is from its own
(meshha.probes.clock, NTP-style from ping/ack pairs), never to accept or drop anything. A
host whose wall clock is minutes off is therefore heard exactly like any other, and its
skew is reported as what it is: a clock to fix, not a dead host. The self-fence deadline
under skew (the isolated host counts its own monotonic time; the majority compares
committed times, which are segment time): a skewed host's deadline does not move at all,
and the majority's proof holds as long as the good clocks agree within
``max_clock_skew_s``; the derivation is in meshha.probes.clock.

Replay, without clocks. ``epoch`` is a 64-bit random nonce drawn when the sender starts
(`new_epoch`), and ``seq`` counts from 0 in each epoch. Every epoch has its own window, and
a decoder keeps the windows of the last `epochs_per_sender` epochs of each sender, so a
datagram is delivered at most once as long as its epoch is remembered. What a datagram
*proves* is decided one level up, by challenge–response: the prober (meshha.probes.swim)
counts a peer as alive only on an ack that echoes the 62-bit random id of a ping it sent
in this run and is still waiting for (``probe_interval_s`` on its own monotonic clock).
So nothing recorded before a restart of either side - the sender's old epoch, or any
datagram a receiver has forgotten - can count as evidence after it: a replayed ping gets
an ack the real host ignores, a replayed ack answers no pending challenge, a replayed
ping-req makes a helper probe once more. The only time bound is the prober's own pending
window, on its own clock: the age check is kept only where it is safe.

Why not drop old epochs at the wire: without a clock or a disk write the receiver cannot
tell an old epoch from a new one, and a rule such as "the newest epoch wins" would let one
replayed datagram from a past epoch lock out the live sender (dropped as "old") and get a
healthy host fenced. Delivering it instead costs one ignored message.

`Decoder.decode` never raises, whatever the bytes: it returns `Message` or `Drop`, and
counts drops by reason (for metrics).

The key is shared by the segment, so it authenticates "a member of this segment", not a
particular host: a member holding the key can claim another member's name. The optional
source-address check narrows that to spoofing on the same network.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import msgpack

from meshha.config.model import MIN_KEY_B
from meshha.errors import MeshhaError

VERSION = 2  # 2: [sender, epoch, seq, ts, msg]; 1 had no epoch and dropped on ts
MAGIC = b"MHP" + bytes([VERSION])
MAC_B = 32
MIN_DATAGRAM_B = len(MAGIC) + MAC_B + 1
# Below the IPv6 minimum MTU (1280) minus headers, so a probe is never fragmented.
MAX_DATAGRAM_B = 1200
MAX_SENDER_LEN = 253  # a DNS name
SEQ_LIMIT = 2**64
EPOCH_LIMIT = 2**64
DEFAULT_WINDOW = 256
# A restart makes a new epoch; a few are kept so that a datagram of the previous run still
# in flight, or replayed, is not delivered twice.
DEFAULT_EPOCHS_PER_SENDER = 4

DROP_REASONS = (
    "too_short",
    "oversize",
    "malformed",
    "bad_mac",
    "unknown_sender",
    "bad_source",
    "replay",
)

# What msgpack may raise on bytes it cannot parse: ExtraData, FormatError, StackError and
# UnicodeDecodeError are ValueErrors; unhashable keys give TypeError.
_UNPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


class WireError(MeshhaError):
    """kind: oversize | bad_key (raised by `encode` and `Decoder`, never by `decode`)."""

    kind = "wire"


@dataclass(frozen=True)
class Message:
    sender: str
    epoch: int
    seq: int
    ts: float
    msg: dict[str, Any]
    src_addr: Any


@dataclass(frozen=True)
class Drop:
    reason: str
    sender: str | None = None
    detail: str = ""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_B:
        raise WireError(f"probe key must be at least {MIN_KEY_B} bytes", kind="bad_key")


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, MAGIC + payload, hashlib.sha256).digest()


def encode(
    msg: dict[str, Any],
    *,
    key: bytes,
    sender: str,
    seq: int,
    now: float,
    epoch: int = 0,
    max_datagram_b: int = MAX_DATAGRAM_B,
) -> bytes:
    """One datagram carrying `msg` from `sender`; `now` is the sender's wall clock (for
    measuring skew only). Raises WireError(oversize) if too big."""
    _check_key(key)
    assert isinstance(msg, dict), type(msg)
    assert 0 < len(sender) <= MAX_SENDER_LEN, sender
    assert 0 <= seq < SEQ_LIMIT, seq
    assert 0 <= epoch < EPOCH_LIMIT, epoch
    payload = msgpack.packb([sender, epoch, seq, float(now), msg], use_bin_type=True)
    data = MAGIC + _mac(key, payload) + payload
    if len(data) > max_datagram_b:
        raise WireError(f"datagram of {len(data)} B exceeds {max_datagram_b} B", kind="oversize")
    return data


def new_epoch() -> int:
    """A sender's epoch for this run: 64 random bits, from the OS (never a clock)."""
    return secrets.randbits(64)


class SeqCounter:
    """A sender's sequence numbers within one epoch: 0, 1, 2, ..."""

    def __init__(self, start: int = 0) -> None:
        assert 0 <= start < SEQ_LIMIT
        self._next = start

    def next(self) -> int:
        seq = self._next
        self._next += 1
        return seq


@dataclass
class _Window:
    """Sliding replay window: `top` is the highest seq accepted, bit i of `seen` is top-i."""

    top: int
    seen: int = 1

    def check(self, seq: int, size: int) -> bool:
        if seq > self.top:
            return True
        behind = self.top - seq
        return behind < size and not (self.seen >> behind) & 1

    def mark(self, seq: int, size: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.seen = ((self.seen << shift) | 1) & ((1 << size) - 1) if shift < size else 1
            self.top = seq
        else:
            self.seen |= 1 << (self.top - seq)


@dataclass
class Decoder:
    """Checks datagrams from the segment; keeps one replay window per sender.

    `senders`: name -> expected source IP (None: any source), or None to accept any sender
    name (then at most `max_senders` windows are kept; more senders are dropped as
    unknown). `src_addr` given to `decode` is what `recvfrom` returned, `(ip, port)`.
    """

    key: bytes
    _: KW_ONLY
    senders: Mapping[str, str | None] | None = None
    window: int = DEFAULT_WINDOW
    epochs_per_sender: int = DEFAULT_EPOCHS_PER_SENDER
    max_datagram_b: int = MAX_DATAGRAM_B
    max_senders: int = 4096
    drops: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    epochs_seen: int = 0  # new (sender, epoch) pairs: restarts of peers, or old replays
    _windows: dict[str, OrderedDict[int, _Window]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_key(self.key)
        assert self.window >= 1 and self.epochs_per_sender >= 1
        assert self.max_datagram_b >= MIN_DATAGRAM_B

    def decode(self, data: bytes, src_addr: Any) -> Message | Drop:
        """A `Message`, or the `Drop` saying why not. Never raises."""
        result = self._decode(data, src_addr)
        if isinstance(result, Drop):
            self.drops[result.reason] += 1
        else:
            self.accepted += 1
        return result

    def _decode(self, data: bytes, src_addr: Any) -> Message | Drop:
        if not isinstance(data, bytes | bytearray | memoryview):
            return Drop("malformed", detail="not bytes")
        data = bytes(data)
        if len(data) > self.max_datagram_b:
            return Drop("oversize", detail=f"{len(data)} B")
        if len(data) < MIN_DATAGRAM_B:
            return Drop("too_short", detail=f"{len(data)} B")
        if data[: len(MAGIC)] != MAGIC:
            return Drop("malformed", detail="magic or version")
        mac, payload = data[len(MAGIC) : len(MAGIC) + MAC_B], data[len(MAGIC) + MAC_B :]
        if not hmac.compare_digest(mac, _mac(self.key, payload)):
            return Drop("bad_mac")
        parsed = _parse(payload)
        if isinstance(parsed, Drop):
            return parsed
        sender, epoch, seq, ts, msg = parsed
        if self.senders is not None:
            if sender not in self.senders:
                return Drop("unknown_sender", sender)
            expected = self.senders[sender]
            if expected is not None and _source_ip(src_addr) != expected:
                return Drop("bad_source", sender, f"from {src_addr!r}, expected {expected}")
        epochs = self._windows.get(sender)
        if epochs is None:
            if len(self._windows) >= self.max_senders:
                return Drop("unknown_sender", sender, "too many senders")
            epochs = self._windows[sender] = OrderedDict()
        win = epochs.get(epoch)
        if win is None:
            self.epochs_seen += 1
            epochs[epoch] = _Window(top=seq)
            while len(epochs) > self.epochs_per_sender:
                epochs.popitem(last=False)  # the least recently heard epoch
        elif not win.check(seq, self.window):
            return Drop("replay", sender, f"epoch {epoch:x} seq {seq}, top {win.top}")
        else:
            win.mark(seq, self.window)
            epochs.move_to_end(epoch)
        return Message(sender=sender, epoch=epoch, seq=seq, ts=ts, msg=msg, src_addr=src_addr)


def _source_ip(src_addr: Any) -> Any:
    return src_addr[0] if isinstance(src_addr, tuple) and src_addr else src_addr


def _parse(payload: bytes) -> tuple[str, int, int, float, dict[str, Any]] | Drop:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except _UNPACK_ERRORS as e:
        return Drop("malformed", detail=f"msgpack: {type(e).__name__}")
    if not (isinstance(obj, list) and len(obj) == 5):
        return Drop("malformed", detail="not [sender, epoch, seq, ts, msg]")
    sender, epoch, seq, ts, msg = obj
    if not (isinstance(sender, str) and 0 < len(sender) <= MAX_SENDER_LEN):
        return Drop("malformed", detail="sender")
    if not (type(epoch) is int and 0 <= epoch < EPOCH_LIMIT):
        return Drop("malformed", sender, "epoch")
    if not (type(seq) is int and 0 <= seq < SEQ_LIMIT):
        return Drop("malformed", sender, "seq")
    if not (isinstance(ts, float) and math.isfinite(ts)):
        return Drop("malformed", sender, "ts")
    if not isinstance(msg, dict):
        return Drop("malformed", sender, "msg")
    return sender, epoch, seq, ts, msg
