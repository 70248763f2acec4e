"""The log port over pysyncobj: Raft between the agents of a segment, over TCP.

How it is driven. pysyncobj runs with `autoTick=False`; one thread, owned by `run()`,
calls `doTick(wait)` in a loop. A tick waits for socket events until pysyncobj next has
something to do by the clock - the leader's next heartbeat, a follower's election
deadline, this member's next keepalive - and at most `tick_s`; a message or a proposal
(pysyncobj's pipe notifier) wakes it sooner. An idle follower so wakes about once per
heartbeat it receives, not every `tick_s`. Everything pysyncobj does -
elections, replication, applying committed entries, compaction - happens in that thread.
After each tick the thread publishes an immutable `LogStatus` (one reference assignment,
so trio reads it without a lock) and, if anything changed, wakes trio with
`TrioToken.run_sync_soon` (never blocking the tick thread on trio). `run()` is started
from the agent's nursery; cancelling it stops the thread, which closes the sockets and
the journal before `run()` returns.

Durability (meshha.raft.journal). pysyncobj's own journal (an mmap never synced, term
and vote renamed into place without fsync) is replaced by `DurableJournal`, an
append-only file of CRC'd records written with one `pwrite` + `fdatasync` per sync. The
tick thread syncs before every `doTick` and again just before pysyncobj polls its
sockets (`_durable`): group commit, since every record of a tick shares one fsync, and
never on trio's thread. The transport holds each acknowledgement (`next_node_idx`) and
each vote or vote request until the sync that covers it returned. So an entry counts as
appended here, and is acknowledged to the leader, only once it is on stable storage; a
term or vote is on disk before any message that reflects it; the leader, which counts
itself toward every commit at the start of `doTick`, only ever counts synced entries;
and readers (the ledger) only see entries this member has on disk. The leader's own
fsync runs while its followers receive and fsync the same entries, so a commit costs
about one fsync plus one round trip (bench/raft_commit.py). pysyncobj's dump
(compaction, or a snapshot from the leader) is made durable too: its rename is replaced
by one that fsyncs the file and the directory, before the journal drops what it covers.
A data dir with only pysyncobj's old `raft.journal` is imported once at start.

When the journal cannot persist (ENOSPC, EDQUOT, EROFS, EIO), nothing raises:
`persist_error` says why (a `JournalError` with `kind`, `path`, `errno`), the member
stops ticking - a voter that cannot persist must neither vote nor acknowledge, and to
its peers it then looks like a stopped member, which Raft is built for - reports no
leader and no quorum, and retries every `persist_retry_s`; the records wait in memory
and it resumes by itself when a sync succeeds. The agent watches `persist_error` (or
`status.persist_error`, woken by `wait_change()`) to alert and to say it stopped voting.

The Raft port (meshha.raft.transport). pysyncobj's `TCPTransport` runs over meshha's
bounded connection and server classes: an unauthenticated peer can make this member
buffer at most one 4 KiB frame before it must prove the password, each connection is
read at most 256 KiB per poll, handshakes time out, and new connections from addresses
that are not the voters' (or `trusted_ips`) are admitted at a bounded rate and number.
Outgoing connections leave from this member's own Raft address, which is how peers
know a voter. `port_counters` counts what was refused. Settings: `port_limits`.

What is replicated. One replicated method appends a packed (msgpack) entry. The entry is
complete before it is proposed (the proposer computes `ts` and ids), so applying it is
deterministic. The replicated state lives in a `SyncObjConsumer` (`_EntryLog`) holding
only the retained tail of `(index, packed entry)` - compaction pickles it; the lock and
callbacks are set before `SyncObjConsumer.__init__` and so are left out of snapshots.
Readers (`committed_from`) read that tail under the lock, each with its own cursor. At
most `retain_entries` are kept; a reader that falls further behind than that gets
`LogError(kind="truncated")` instead of a silent gap (the ledger has the full history).

Settings, and how they combine (pysyncobj names in brackets):

- `election_timeout_min_s` / `_max_s` [raftMinTimeout/raftMaxTimeout]: a follower that
  hears no leader for a random time in this range stands for election. Lower is faster
  failover and more spurious elections under CPU or network stalls. min must exceed
  3 x `heartbeat_interval_s` [appendEntriesPeriod].
- `leader_fallback_timeout_s` [leaderFallbackTimeout]: a leader that has not heard a
  majority for this long steps down (pysyncobj's default of 30 s is far too long for
  HA). `has_quorum` is stricter still: `quorum_window_s` (default: the max election
  timeout, after which the majority side has a new leader anyway).
- `connection_timeout_s` [connectionTimeout, >= max election timeout]: a silent TCP
  peer is dropped after this; `reconnect_interval_s` [connectionRetryTime, default 5 s
  in pysyncobj] bounds how soon a restarted peer is reconnected.
- `compaction_min_entries` / `_time_s`: when pysyncobj snapshots the consumer to
  `raft.dump` and truncates `raft.wal` (in the tick thread: `useFork=False`, since
  forking a multi-threaded process is unsafe).
- `persist_retry_s`: how often a member whose journal cannot persist tries again. Lower
  rejoins sooner after space is freed; each try is one write + fsync attempt.
- `port_limits` (meshha.raft.transport.PortLimits) and `trusted_ips`: the Raft port's
  bounds; `max_frame_b` must hold a batch of entries (>= 4 x `max_entry_b`).

Also fixed here: `password` always set (pysyncobj then Fernet-encrypts and authenticates
every message; without it the transport unpickles whatever arrives); the server binds
only the host's own Raft address; `commandsWaitLeader=False`, so a proposal made while
there is no leader fails at once instead of waiting in a queue and committing much later;
`appendEntriesUseBatch=False`, for commit latency over throughput (entries are rare).

Non-voting members. pysyncobj has read-only nodes: `SyncObj(None, voters)`. Such a node
binds no port; it connects out to every voter and announces itself as 'readonly'; the
leader then replicates to it like to a follower but leaves it out of elections and the
commit majority. It forwards proposals to the leader like any follower. A host not in
`voters` runs this way here. Voters learn of it only through its connection (they need
no address for it), so a read-only member must reach the voters, not the other way.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import pysyncobj.serializer
import structlog
import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.syncobj import SyncObjException

from meshha.errors import ConfigError, LogError
from meshha.raft.entries import pack, unpack
from meshha.raft.journal import (
    JOURNAL_FILE,
    DurableJournal,
    JournalError,
    durable_replace,
    install_journal,
    open_journal,
)
from meshha.raft.log import Entry
from meshha.raft.transport import KEEPALIVE_TYPE, MeshhaTransport, PortLimits

log = structlog.get_logger("meshha.raft")

MAX_ENTRY_B = 64 * 1024
READ_BATCH = 256
_KEEPALIVE = {"type": KEEPALIVE_TYPE}
DUMP_FILE = "raft.dump"
__all__ = ["DUMP_FILE", "JOURNAL_FILE", "LogStatus", "PysyncobjLog", "RaftLogConfig"]

# pysyncobj's failure reasons -> LogError kinds (see meshha.raft.log for what each means).
_FAIL_KINDS = {
    FAIL_REASON.MISSING_LEADER: ("no_quorum", "no leader"),
    FAIL_REASON.QUEUE_FULL: ("no_quorum", "command queue full"),
    FAIL_REASON.NOT_LEADER: ("not_leader", "the node it reached is not the leader"),
    FAIL_REASON.DISCARDED: ("not_leader", "discarded by a new leader"),
    FAIL_REASON.REQUEST_DENIED: ("not_leader", "denied by the leader"),
    FAIL_REASON.LEADER_CHANGED: ("timeout", "leader changed in flight: outcome unknown"),
    FAIL_REASON.UNKNOWN_OUTCOME: ("timeout", "outcome unknown"),
}


@dataclass(frozen=True)
class RaftLogConfig:
    """One member's view of its segment's Raft group. See the module doc for the trade-offs."""

    me: str
    voters: Mapping[str, str]  # voter name -> "ip:port" on the admin network
    password: bytes | str
    data_dir: Path
    bind_address: str | None = None  # default: my entry in `voters`
    election_timeout_min_s: float = 0.4
    election_timeout_max_s: float = 1.4
    heartbeat_interval_s: float = 0.1
    leader_fallback_timeout_s: float = 3.0
    quorum_window_s: float | None = None  # default: election_timeout_max_s
    connection_timeout_s: float = 3.5
    reconnect_interval_s: float = 1.0
    keepalive_interval_s: float | None = None  # default: connection_timeout_s / 3
    tick_s: float = 0.25  # the longest a tick waits (see _tick_wait_s)
    retain_entries: int = 100_000
    compaction_min_entries: int = 5000
    compaction_min_time_s: float = 300.0
    max_entry_b: int = MAX_ENTRY_B
    persist_retry_s: float = 1.0
    port_limits: PortLimits = field(default_factory=PortLimits)
    trusted_ips: frozenset[str] = frozenset()  # non-voting members' addresses
    # A non-voting member (no bind address): the address its connections leave from, so
    # that voters find it in their `trusted_ips`. None: the kernel's choice.
    source_ip: str | None = None

    @property
    def voter(self) -> bool:
        return self.me in self.voters

    @property
    def window_s(self) -> float:
        return self.quorum_window_s or self.election_timeout_max_s

    @property
    def keepalive_s(self) -> float:
        return self.keepalive_interval_s or self.connection_timeout_s / 3

    def check(self) -> None:
        problems = []
        if not self.password:
            problems.append("password: must be set (pysyncobj is unauthenticated without)")
        if not self.voters:
            problems.append("voters: empty")
        for name, addr in self.voters.items():
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                problems.append(f"voters.{name}: {addr!r} is not ip:port")
        if not self.election_timeout_min_s > 3 * self.heartbeat_interval_s:
            problems.append("election_timeout_min_s must exceed 3 x heartbeat_interval_s")
        if not self.election_timeout_max_s > self.election_timeout_min_s:
            problems.append("election_timeout_max_s must exceed election_timeout_min_s")
        if not self.leader_fallback_timeout_s > self.heartbeat_interval_s:
            problems.append("leader_fallback_timeout_s must exceed heartbeat_interval_s")
        if not self.window_s > 2 * self.heartbeat_interval_s:
            problems.append("quorum_window_s must exceed 2 x heartbeat_interval_s")
        if not self.connection_timeout_s >= self.election_timeout_max_s:
            problems.append("connection_timeout_s must be >= election_timeout_max_s")
        if not 0 < self.keepalive_s < self.connection_timeout_s:
            problems.append("keepalive_interval_s must be below connection_timeout_s")
        if not (self.tick_s > 0 and self.retain_entries >= 1 and self.max_entry_b > 0):
            problems.append("tick_s, retain_entries and max_entry_b must be positive")
        if not self.persist_retry_s > 0:
            problems.append("persist_retry_s must be positive")
        if not 4 * self.max_entry_b <= self.port_limits.max_frame_b:
            problems.append("port_limits.max_frame_b must hold a batch: >= 4 x max_entry_b")
        if problems:
            raise ConfigError("; ".join(problems), where=f"raft ({self.me})")


@dataclass(frozen=True)
class LogStatus:
    """This member's view after the latest tick (see meshha.raft.log for the meanings)."""

    leader: str | None = None
    term: int = 0
    is_leader: bool = False
    has_quorum: bool = False
    commit_index: int = 0  # last committed entry handed to readers
    raft_commit_index: int = 0  # pysyncobj's, counting its no-op entries too
    voter: bool = True
    heard: tuple[str, ...] = ()  # voters heard from within the quorum window
    running: bool = False
    persist_error: str | None = None  # the journal cannot persist: not voting, not acking


class _EntryLog(SyncObjConsumer):
    """The replicated state: the retained tail of committed `(index, packed entry)`.

    Attributes set before `SyncObjConsumer.__init__` are local and never pickled.
    """

    def __init__(self, retain: int, on_apply: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._retain = retain
        self._on_apply = on_apply
        super().__init__()
        self.entries: list[tuple[int, bytes]] = []
        self.dropped_through = 0  # every index up to here is gone from `entries`

    @replicated
    def append(self, packed: bytes) -> int:
        # Applied in log order in the tick thread; the entry's index is the next one.
        index = self._syncObj.raftLastApplied + 1
        with self._lock:
            self.entries.append((index, packed))
            if len(self.entries) > self._retain:  # drop a tenth at once: amortised O(1)
                cut = len(self.entries) - self._retain + self._retain // 10
                self.dropped_through = self.entries[cut - 1][0]
                del self.entries[:cut]
        self._on_apply()
        return index

    def _deserialize(self, data: dict[str, Any]) -> None:
        # A snapshot: our own dump at startup, or the leader's, sent to a lagging member.
        with self._lock:
            super()._deserialize(data)
        self._on_apply()

    def after(self, index: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        with self._lock:
            i = bisect.bisect_right(self.entries, index, key=itemgetter(0))
            return self.entries[i : i + limit], self.dropped_through

    def last_index(self) -> int:
        with self._lock:
            return self.entries[-1][0] if self.entries else self.dropped_through


class PysyncobjLog:
    """A `LogPort` backed by pysyncobj. Start `run` in a nursery, then use the port."""

    def __init__(
        self,
        config: RaftLogConfig,
        *,
        on_journal_synced: Callable[[Path, int], None] | None = None,
    ) -> None:
        """`on_journal_synced(path, size)`: after each journal sync, the size now on
        stable storage (the power-cut test records it; leave None otherwise)."""
        config.check()
        self.config = config
        self._on_journal_synced = on_journal_synced
        self._journal: DurableJournal | None = None
        self._names = {addr: name for name, addr in config.voters.items()}
        self._other_voters = {a for n, a in config.voters.items() if n != config.me}
        self._consumer = _EntryLog(config.retain_entries, self._on_apply)
        self._status = LogStatus(voter=config.voter)
        self._syncobj: SyncObj | None = None
        self._transport: MeshhaTransport | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._changed = trio.Event()
        self._applied = False  # set in the tick thread, cleared after publishing
        self._stop = threading.Event()

    # ---- the port ----------------------------------------------------------------------

    @property
    def status(self) -> LogStatus:
        return replace(self._status, commit_index=self.commit_index)

    @property
    def leader(self) -> str | None:
        return self._status.leader

    @property
    def term(self) -> int:
        return self._status.term

    @property
    def is_leader(self) -> bool:
        return self._status.is_leader

    @property
    def has_quorum(self) -> bool:
        return self._status.has_quorum

    @property
    def commit_index(self) -> int:
        return self._consumer.last_index()  # live: never behind what readers were handed

    @property
    def persist_error(self) -> JournalError | None:
        """Why the journal cannot reach stable storage right now, or None.

        While set, this member takes no part in Raft (it neither votes nor acknowledges
        entries, and reports `has_quorum` False and `is_leader` False); it retries every
        `persist_retry_s` and resumes by itself once a write and fsync succeed, with
        nothing lost: the records wait in memory. `wait_change()` returns when it is set
        and when it clears. The error carries `kind` (disk_full, read_only, io), `path`
        and `errno`.
        """
        return self._journal.persist_error if self._journal is not None else None

    @property
    def port_counters(self) -> dict[str, float]:
        """What the Raft port refused since start (meshha.raft.transport.PortCounters)."""
        return self._transport.counters.snapshot() if self._transport is not None else {}

    async def propose(self, entry: Entry, *, timeout_s: float) -> int:
        assert isinstance(entry, dict) and isinstance(entry.get("kind"), str), entry
        where = self.config.me
        packed = pack(entry)
        if len(packed) > self.config.max_entry_b:
            raise LogError(
                f"entry of {len(packed)} B over {self.config.max_entry_b} B",
                kind="too_large",
                where=where,
            )
        status = self._status
        if self._syncobj is None or not status.has_quorum:
            why = f"; journal: {status.persist_error}" if status.persist_error else ""
            raise LogError(
                f"no leader with a quorum (leader: {status.leader}, term {status.term}){why}",
                kind="no_quorum",
                where=where,
            )
        token = self._token
        assert token is not None
        done = trio.Event()
        outcome: list[tuple[Any, int]] = []

        def finish(res: Any, err: int) -> None:  # in trio
            outcome.append((res, err))
            done.set()

        def on_result(res: Any, err: int) -> None:  # in the tick thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finish, res, err)

        self._consumer.append(packed, callback=on_result)
        with trio.move_on_after(timeout_s):
            await done.wait()
        if not outcome:
            raise LogError(
                f"not committed within {timeout_s:g}s: outcome unknown", kind="timeout", where=where
            )
        res, err = outcome[0]
        if err == FAIL_REASON.SUCCESS:
            return int(res)
        kind, why = _FAIL_KINDS.get(err, ("timeout", f"pysyncobj failure {err}"))
        raise LogError(why, kind=kind, where=where)

    async def committed_from(self, index: int) -> AsyncIterator[tuple[int, Entry]]:
        cursor = index
        while True:
            changed = self._changed
            batch, dropped_through = self._consumer.after(cursor, READ_BATCH)
            if cursor < dropped_through:
                raise LogError(
                    f"entries {cursor + 1}..{dropped_through} were compacted away "
                    f"(retain_entries={self.config.retain_entries}); read them from the ledger",
                    kind="truncated",
                    where=self.config.me,
                )
            if not batch:
                await changed.wait()
                continue
            for idx, packed in batch:
                yield idx, unpack(packed)
                cursor = idx
            await trio.lowlevel.checkpoint()

    async def wait_change(self) -> None:
        """Return at the next change of status or of the committed entries."""
        await self._changed.wait()

    # ---- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the member (load the journal, bind), tick it until cancelled, close it.

        Raises before `task_status.started()` only: `LogError(kind="bind")` if the port
        is taken, `JournalError` (kind corrupt, io, read_only, disk_full) if the journal
        cannot be read or its directory created. Once started, disk errors never raise:
        see `persist_error`."""
        assert self._syncobj is None, "run() once per PysyncobjLog"
        self._token = trio.lowlevel.current_trio_token()
        self._syncobj = syncobj = await trio.to_thread.run_sync(self._create)
        ticked = threading.Event()

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                self._stop.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_cancelled)
                self._status = replace(self._status, running=True)
                task_status.started()
                try:
                    await trio.to_thread.run_sync(
                        self._tick_loop, ticked, limiter=trio.CapacityLimiter(1)
                    )
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if not ticked.is_set():  # cancelled before the thread started: close it here
                syncobj.destroy()

    def _make_transport(self, syncobj: SyncObj, self_node: Any, others: Any) -> MeshhaTransport:
        c = self.config
        bind = c.bind_address or c.voters.get(c.me)
        voter_ips = {addr.rpartition(":")[0] for addr in c.voters.values()}
        journal = self._journal
        assert journal is not None
        self._transport = MeshhaTransport(
            syncobj,
            self_node,
            others,
            limits=c.port_limits,
            trusted_ips=frozenset(voter_ips | set(c.trusted_ips)),
            source_ip=bind.rpartition(":")[0] if bind else c.source_ip,
            is_durable=lambda: not journal.dirty,
        )
        return self._transport

    def _create(self) -> SyncObj:
        c = self.config
        try:
            c.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError.from_os(e, c.data_dir, "create the directory of") from e
        self._journal = journal = open_journal(c.data_dir, on_synced=self._on_journal_synced)
        self_addr = c.voters.get(c.me)  # None: a read-only (non-voting) member
        conf = SyncObjConf(
            password=c.password,
            autoTick=False,
            bindAddress=c.bind_address or self_addr,
            journalFile=None,  # an in-memory one, replaced by ours below
            fullDumpFile=os.fspath(c.data_dir / DUMP_FILE),
            useFork=False,
            raftMinTimeout=c.election_timeout_min_s,
            raftMaxTimeout=c.election_timeout_max_s,
            appendEntriesPeriod=c.heartbeat_interval_s,
            leaderFallbackTimeout=c.leader_fallback_timeout_s,
            connectionTimeout=c.connection_timeout_s,
            connectionRetryTime=c.reconnect_interval_s,
            commandsWaitLeader=False,
            appendEntriesUseBatch=False,
            logCompactionMinEntries=c.compaction_min_entries,
            logCompactionMinTime=c.compaction_min_time_s,
            dynamicMembershipChange=False,
            maxBindRetries=1,
        )
        others = [addr for name, addr in c.voters.items() if name != c.me]
        try:
            syncobj = SyncObj(
                self_addr,
                others,
                conf=conf,
                consumers=[self._consumer],
                transportClass=self._make_transport,
            )
        except SyncObjException as e:
            raise LogError(
                f"cannot listen on {conf.bindAddress}: {e}", kind="bind", where=c.me
            ) from e
        install_journal(syncobj, journal)
        syncobj.addOnTickCallback(self._durable)
        # Read in _leader_caught_up and _tick_wait_s; fail here, loudly, if a pysyncobj
        # upgrade renames them.
        for name in _SYNCOBJ_INTERNALS:
            assert hasattr(syncobj, name), f"pysyncobj internals changed: no {name}"
        log.info("raft member started", me=c.me, voter=c.voter, addr=self_addr, peers=others)
        return syncobj

    def _tick_loop(self, ticked: threading.Event) -> None:
        syncobj = self._syncobj
        assert syncobj is not None
        ticked.set()
        next_keepalive = 0.0
        try:
            while not self._stop.is_set():
                # Durable before every tick: the leader counts itself toward commits at the
                # start of doTick, and entries are applied (handed to readers) there too.
                if not self._durable():
                    self._publish(self._compute_status(syncobj))
                    self._stop.wait(self.config.persist_retry_s)  # frozen: not voting
                    continue
                syncobj.doTick(self._tick_wait_s(syncobj, next_keepalive))
                if time.monotonic() >= next_keepalive:
                    self._send_keepalives(syncobj)
                    next_keepalive = time.monotonic() + self.config.keepalive_s
                self._publish(self._compute_status(syncobj))
        finally:
            syncobj.destroy()  # with autoTick=False: closes sockets and the journal now
            self._publish(replace(self._status, is_leader=False, has_quorum=False, running=False))

    # ---- the tick thread's side --------------------------------------------------------

    def _tick_wait_s(self, syncobj: SyncObj, next_keepalive: float) -> float:
        """How long the next tick may wait for socket events: until pysyncobj has work by
        the clock (the leader's next heartbeat, a voter's election deadline) or a
        keepalive is due, and at most `tick_s`. pysyncobj acts first and then waits, so
        a deadline reached now is met by this tick; one that stays in the past (a
        follower connected to nobody cannot stand) is retried every heartbeat interval
        rather than in a busy loop."""
        c = self.config
        if syncobj._isLeader():
            due = syncobj._SyncObj__newAppendEntriesTime
        elif c.voter:
            due = syncobj._SyncObj__raftElectionDeadline
        else:
            due = next_keepalive
        wait = min(due, next_keepalive) - time.monotonic()
        if wait <= 0:
            return min(c.tick_s, c.heartbeat_interval_s)
        return min(c.tick_s, wait)

    def _on_apply(self) -> None:
        self._applied = True

    def _durable(self) -> bool:
        """Sync the journal (one write, one fdatasync for everything since the last
        call: group commit), then send the acknowledgements and votes that waited for
        it. Runs before each tick and again just before pysyncobj polls its sockets."""
        assert self._journal is not None and self._transport is not None
        if not self._journal.sync():
            return False
        self._transport.release_held()
        return True

    def _send_keepalives(self, syncobj: SyncObj) -> None:
        """Keep every connection busy, including follower-to-follower ones.

        pysyncobj checks a connection's idle time only when data arrives, and drops it
        if it was idle longer than connectionTimeout. Followers send each other nothing
        until an election, so the first vote request after a leader dies would drop the
        connection instead of being counted, costing a reconnect and another election
        round. Unknown message types are ignored by pysyncobj; send only on connections
        whose handshake is done (a message there before it would be taken for the
        peer's node id). Not between the leader and its followers: heartbeats and their
        answers keep those busy (every member, non-voting ones too, answers each one).
        """
        assert self._transport is not None
        if syncobj._isLeader():
            return  # its heartbeats, and the answers to them, keep its connections busy
        leader = syncobj._getLeader()
        for node in syncobj.otherNodes | syncobj.readonlyNodes:
            if node != leader and syncobj.isNodeConnected(node):
                self._transport.send(node, _KEEPALIVE)

    def _compute_status(self, syncobj: SyncObj) -> LogStatus:
        assert self._transport is not None and self._journal is not None
        if self._journal.persist_error is not None:  # frozen: no leader, no vote, no quorum
            return LogStatus(
                term=syncobj.raftCurrentTerm,
                commit_index=self._consumer.last_index(),
                raft_commit_index=syncobj.raftCommitIndex,
                voter=self.config.voter,
                running=True,
                persist_error=str(self._journal.persist_error),
            )
        now = time.monotonic()
        window = self.config.window_s
        fresh = {a for a, t in list(self._transport.heard.items()) if now - t <= window}
        leader_node = syncobj._getLeader()
        is_leader = syncobj._isLeader()
        if is_leader:
            votes = 1 + len(fresh & self._other_voters)
            has_quorum = 2 * votes > len(self.config.voters) and _leader_caught_up(syncobj)
        else:
            # pysyncobj keeps a leader it no longer hears from (a read-only member never
            # forgets it): show only one heard from within the window.
            if leader_node is not None and leader_node.id not in fresh:
                leader_node = None
            has_quorum = leader_node is not None
        return LogStatus(
            leader=self._names.get(leader_node.id) if leader_node is not None else None,
            term=syncobj.raftCurrentTerm,
            is_leader=is_leader,
            has_quorum=has_quorum,
            commit_index=self._consumer.last_index(),
            raft_commit_index=syncobj.raftCommitIndex,
            voter=self.config.voter,
            heard=tuple(sorted(self._names[a] for a in fresh if a in self._names)),
            running=True,
        )

    def _publish(self, status: LogStatus) -> None:
        changed = status != self._status or self._applied
        self._status = status
        self._applied = False
        if changed and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:  # in trio
        self._changed.set()
        self._changed = trio.Event()


# The one process-wide change to pysyncobj: its serializer imports `atomicReplace` by name
# and calls it for every dump it writes (a compaction's, or a snapshot received from the
# leader). Ours does the same rename, durably (meshha.raft.journal.durable_replace).
pysyncobj.serializer.atomicReplace = durable_replace  # type: ignore[attr-defined]


_SYNCOBJ_INTERNALS = (
    "_SyncObj__noopIDx",
    "_SyncObj__newAppendEntriesTime",
    "_SyncObj__raftElectionDeadline",
)


def _leader_caught_up(syncobj: SyncObj) -> bool:
    """Has this leader committed its term's no-op and applied everything up to it?

    Until then, entries committed by earlier leaders may not be applied here yet (Raft
    §5.4.2, §8), so deciding from local state could repeat a decision.
    """
    noop_index = syncobj._SyncObj__noopIDx or 0
    return syncobj.raftCommitIndex >= noop_index and syncobj.raftLastApplied >= (
        syncobj.raftCommitIndex
    )
