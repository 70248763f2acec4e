"""The Raft journal on stable storage: pysyncobj's `Journal` interface, made durable.

Why meshha has its own. pysyncobj's `FileJournal` writes entries into an mmap that is
never synced, and its metadata (term, vote) with a rename and no fsync: after a power
cut a voter can come back without entries it acknowledged, or having forgotten its vote.
Its mmap also turns a full disk into SIGBUS (a crash, not an error). SQLite with
`synchronous=FULL` (one store with the ledger) was the other candidate; it was not
chosen because (1) the journal and the ledger have different lives: the journal is
truncated at every compaction and rewritten by the leader on conflicts, the ledger keeps
the whole history and is written by a different thread at a different pace, so one
store would couple their locks, their failure modes and their fsyncs; (2) SQLite hides
the errno (SQLITE_FULL, SQLITE_IOERR_*), and the operator wants the path and errno;
(3) an append-only file makes the durability argument short enough to check by reading,
and lets the power-cut test say exactly which bytes were on disk (see `on_synced`).
They still agree by construction: the ledger is keyed by Raft index and fed only
entries this journal had made durable (see "Ordering" below).

The file (`raft.wal`): a header, then records `type(1) | length(4) | crc32(4) | payload`
(little-endian; the CRC covers type, length and payload):

- `E` entry: index(8), term(8), the command bytes;
- `T` truncate: index(8): every entry from that index on is gone (a follower dropping
  a conflicting suffix);
- `M` meta: current term(8), commit index(8), voted-for (2-byte length, 0xFFFF = none).

Loading replays the records in order; the first record that is short, too long or fails
its CRC ends the journal (a torn write at the tail: it can only hold bytes that were
never synced, so never acknowledged), and that tail is cut off before anything new is
written (so stale bytes can never be read as records later). Compaction and snapshot
installs (`deleteEntriesTo`, `clear`) rewrite the whole file: tmp file, fsync, rename,
fsync of the directory. So does a file that holds more than twice the records it needs.

Group commit. Nothing here writes on `add`/`setCurrentTerm`: records collect in memory,
and `sync()` writes them all with one `pwrite` and one `fdatasync`. The member calls
`sync()` from its tick thread (never from trio) at two points of every tick: before
`doTick` (so the leader, which counts itself toward every commit, only ever counts
entries on its own disk) and just before pysyncobj polls its sockets (so the leader's
own fsync runs while its followers receive and fsync the same entries). `dirty` says
whether records wait for a sync; the transport holds back every acknowledgement and vote
while it is true (`meshha.raft.transport`). Hence the promise: an entry counts as
appended on this member, and is acknowledged to the leader, only once `fdatasync`
returned for it; a term or vote is on disk before any message that reflects it leaves.

The price of syncing in the tick thread: a slow fsync delays this member's heartbeats
and elections by as long (etcd does the same; its operators are told to keep WAL
fdatasync p99 under 10 ms); a disk slower than the election timeout costs a leader its
leadership, which is the right outcome for a member that cannot persist in time.

Ordering. pysyncobj applies committed entries (hands them to readers, and so to the
ledger) at the start of a tick, after the sync that precedes `doTick`: a reader never
sees an entry this member could lose in a power cut.

A quiet segment writes nothing, so a disk that filled up (or went read-only) meanwhile
would go unnoticed until the next entry. So every `probe_every_s` (counted by pysyncobj's
one-second timer) the next `sync()` also proves the directory can take a new block: it
writes `PROBE_B` bytes to a fresh `raft.wal.probe`, fdatasyncs it and removes it (a
rewrite of an existing block, or an append into the file's last one, could succeed on a
full disk). A probe that fails is a disk error like any other, below; while one is due,
`dirty` is true, so nothing is acknowledged before it ran.

Disk errors. `sync()` never raises: a failed write or fsync (ENOSPC, EDQUOT, EROFS, EIO)
sets `persist_error` (a `JournalError` with the path and errno) and returns False; the
records stay in memory and the next `sync()` writes them again from their start (after
a failed fsync the kernel may have dropped the dirty pages, so only a rewrite from our
own copy is safe). The member stops ticking until a sync succeeds: it neither votes nor
acknowledges, which is what a voter that cannot persist must do (`PysyncobjLog`).
"""

from __future__ import annotations

import contextlib
import errno as errno_names
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from pysyncobj.journal import FileJournal, Journal
from pysyncobj.syncobj import _COMMAND_TYPE

from meshha.errors import LogError

log = structlog.get_logger("meshha.raft.journal")

PROBE_EVERY_S = 5  # seconds between the checks that a new block can be written (doc)
PROBE_B = 4096  # one page / file-system block: a full disk refuses it
HEADER = b"MESHHA-RAFT-WAL\x00\x01\x00\x00\x00"  # name, NUL, format version 1 (u32 LE)
_REC = struct.Struct("<cII")  # type, payload length, crc32
_E, _T, _M = b"E", b"T", b"M"
_QQ = struct.Struct("<QQ")
_Q = struct.Struct("<Q")
_H = struct.Struct("<H")
_NO_VOTE = 0xFFFF
MAX_RECORD_B = 64 * 1024 * 1024  # a longer length field can only be a torn write
_DISK_FULL = {errno_names.ENOSPC, errno_names.EDQUOT}
_READ_ONLY = {errno_names.EROFS, errno_names.EACCES, errno_names.EPERM}

RaftEntry = tuple[bytes, int, int]  # pysyncobj's (command, index, term)
JOURNAL_FILE = "raft.wal"
OLD_JOURNAL_FILE = "raft.journal"  # pysyncobj's own, imported once on upgrade
_NO_OP = bytes([_COMMAND_TYPE.NO_OP])  # what pysyncobj starts an empty journal with


class JournalError(LogError):
    """The Raft journal cannot be read or persisted.

    kind: disk_full (ENOSPC, EDQUOT) | read_only (EROFS, EACCES, EPERM) | io (EIO and
    the rest) | corrupt (not a journal, or unreadable in the middle). `path` and `errno`
    (None for corrupt) say where and why; the message names both.
    """

    kind = "io"

    def __init__(self, message: str, *, kind: str, path: Path, errno: int | None) -> None:
        super().__init__(message, kind=kind, where=str(path))
        self.path = path
        self.errno = errno

    @classmethod
    def from_os(cls, err: OSError, path: Path, doing: str) -> JournalError:
        code = err.errno or errno_names.EIO
        kind = "disk_full" if code in _DISK_FULL else "read_only" if code in _READ_ONLY else "io"
        name = errno_names.errorcode.get(code, str(code))
        return cls(
            f"cannot {doing} the raft journal: {os.strerror(code)} ({name})",
            kind=kind,
            path=path,
            errno=code,
        )


def _record(kind: bytes, payload: bytes) -> bytes:
    head = kind + struct.pack("<I", len(payload))
    return _REC.pack(kind, len(payload), zlib.crc32(payload, zlib.crc32(head))) + payload


def _entry_record(command: bytes, idx: int, term: int) -> bytes:
    return _record(_E, _QQ.pack(idx, term) + command)


def _meta_record(term: int, commit: int, voted: str | None) -> bytes:
    v = b"" if voted is None else voted.encode()
    assert len(v) < _NO_VOTE, voted
    return _record(_M, _QQ.pack(term, commit) + _H.pack(_NO_VOTE if voted is None else len(v)) + v)


def write_probe(path: Path) -> None:
    """Blocking: write `PROBE_B` bytes to a fresh file at `path`, fdatasync, remove it.
    Raises the OSError of a directory that cannot take a new block now (a full disk
    refuses it, where a rewrite of an existing block or an append into a file's last
    one could still succeed). The journal's probe and the ledger's (agent.persist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, bytes(PROBE_B))
        os.fdatasync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


class DurableJournal(Journal):
    """pysyncobj's journal interface over an append-only, fsynced file. See the module doc.

    `on_synced(path, size)` is called after every successful sync with the file size
    that is now on stable storage (the power-cut test records it; None in production).
    """

    def __init__(
        self,
        path: Path,
        *,
        on_synced: Callable[[Path, int], None] | None = None,
        max_superseded: int = 1000,
        probe_every_s: int = PROBE_EVERY_S,
    ) -> None:
        self.path = path
        self._probe_every_s = probe_every_s
        self._probe_in_s = probe_every_s
        self._probe_due = False
        self._on_synced = on_synced
        self._max_superseded = max_superseded  # records beyond 2 x entries: rewrite
        self._entries: list[RaftEntry] = []
        self._term = 0
        self._voted: str | None = None
        self._commit = 1  # pysyncobj's default when nothing was stored
        self._commit_dirty = False
        self._pending = bytearray()  # records not yet on stable storage
        self._pending_records = 0
        self._size = 0  # bytes of the file on stable storage (our records end there)
        self._records = 0  # records in the file, for the rewrite-when-bloated rule
        self._rewrite = False  # the whole file must be rewritten from memory
        self._cut_tail = False  # a torn tail follows `_size`: cut it before writing
        self._fd: int | None = None
        self.persist_error: JournalError | None = None
        self.syncs = 0  # successful syncs that wrote something (group commit: <= records)
        self._load()

    # ---- loading -----------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._rewrite = True  # created, header and all, at the first sync
            return
        except OSError as e:
            raise JournalError.from_os(e, self.path, "read") from e
        if not data:
            self._rewrite = True
            return
        if not data.startswith(HEADER):
            raise JournalError(
                f"not a meshha raft journal (header {data[: len(HEADER)]!r})",
                kind="corrupt",
                path=self.path,
                errno=None,
            )
        off = len(HEADER)
        while off < len(data):
            end = self._replay_one(data, off)
            if end is None:
                break
            off = end
            self._records += 1
        self._size = off
        if off < len(data):
            log.warning(
                "raft journal: torn tail dropped (never synced, so never acknowledged)",
                path=str(self.path),
                at=off,
                bytes=len(data) - off,
            )
            self._cut_tail = True

    def _replay_one(self, data: bytes, off: int) -> int | None:
        """Apply the record at `off` to memory; its end, or None if it is not whole."""
        if off + _REC.size > len(data):
            return None
        kind, length, crc = _REC.unpack_from(data, off)
        start, end = off + _REC.size, off + _REC.size + length
        if length > MAX_RECORD_B or end > len(data):
            return None
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(kind + struct.pack("<I", length))) != crc:
            return None
        if kind == _E:
            idx, term = _QQ.unpack_from(payload)
            while self._entries and self._entries[-1][1] >= idx:
                self._entries.pop()  # an entry at an index we had replaces it and the rest
            self._entries.append((payload[_QQ.size :], idx, term))
        elif kind == _T:
            (idx,) = _Q.unpack_from(payload)
            while self._entries and self._entries[-1][1] >= idx:
                self._entries.pop()
        elif kind == _M:
            self._term, self._commit = _QQ.unpack_from(payload)
            (n,) = _H.unpack_from(payload, _QQ.size)
            at = _QQ.size + _H.size
            self._voted = None if n == _NO_VOTE else payload[at : at + n].decode()
        else:
            return None
        return end

    # ---- pysyncobj's Journal interface (called in the tick thread only) ---------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        command = bytes(command)
        assert not self._entries or idx == self._entries[-1][1] + 1, (idx, self._entries[-1])
        self._entries.append((command, idx, term))
        if not self._rewrite:
            self._queue(_entry_record(command, idx, term))

    def clear(self) -> None:
        self._entries = []
        self._rewrite = True
        self._pending.clear()
        self._pending_records = 0

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        first_gone = self._entries[entryFrom][1]
        del self._entries[entryFrom:]
        if not self._rewrite:
            self._queue(_record(_T, _Q.pack(first_gone)))

    def deleteEntriesTo(self, entryTo: int) -> None:
        # Called after pysyncobj's dump of everything before entryTo is on disk (its rename
        # is made durable by meshha.raft.pysyncobj_log's atomic replace).
        del self._entries[:entryTo]
        self._rewrite = True
        self._pending.clear()
        self._pending_records = 0

    def __getitem__(self, item: Any) -> Any:  # an index or a slice, as on a list
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Volatile in Raft: stored at most once a second (onOneSecondTimer), never alone
        # the reason for an acknowledgement to wait.
        if raftCommitIndex != self._commit:
            self._commit = raftCommitIndex
            self._commit_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        self._term, self._voted = term, votedForNodeId
        self._commit_dirty = False
        if not self._rewrite:
            self._queue(_meta_record(term, self._commit, votedForNodeId))

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted

    def onOneSecondTimer(self) -> None:
        self._probe_in_s -= 1
        if self._probe_in_s <= 0:
            self._probe_due, self._probe_in_s = True, self._probe_every_s
        if self._commit_dirty and not self._rewrite:
            self._queue(_meta_record(self._term, self._commit, self._voted))
            self._commit_dirty = False

    def _destroy(self) -> None:
        self.sync()
        self._close()

    # ---- durability --------------------------------------------------------------------

    def _queue(self, record: bytes) -> None:
        self._pending += record
        self._pending_records += 1

    @property
    def dirty(self) -> bool:
        """Records wait for a sync: acknowledgements and votes must wait too."""
        return self._unsynced()

    def _unsynced(self) -> bool:
        return bool(self._pending) or self._rewrite or self._cut_tail or self._probe_due

    def sync(self) -> bool:
        """Put every record on stable storage (one write, one fdatasync). False, with
        `persist_error` set, if it could not; call again to retry. Never raises OSError."""
        if not self._unsynced():
            return True
        if not self._rewrite and self._records > 2 * len(self._entries) + self._max_superseded:
            self._rewrite = True  # mostly superseded records: start a fresh file
        wrote = self._rewrite or bool(self._pending) or self._cut_tail
        try:
            if self._rewrite:
                self._write_fresh_file()
            elif self._pending or self._cut_tail:
                self._append_pending()
            if self._probe_due:
                probe = self.path.with_name(self.path.name + ".probe")
                write_probe(probe)
                self._probe_due = False
        except OSError as e:
            self._close()
            err = JournalError.from_os(
                e, self.path, "write" if e.errno != errno_names.EIO else "sync"
            )
            if self.persist_error is None or self.persist_error.errno != err.errno:
                log.error(
                    "raft journal cannot persist",
                    path=str(self.path),
                    errno=err.errno,
                    error=str(err),
                )
            self.persist_error = err
            return False
        self.syncs += wrote
        if self.persist_error is not None:
            log.warning("raft journal persists again", path=str(self.path))
            self.persist_error = None
        if self._on_synced is not None:
            self._on_synced(self.path, self._size)
        return True

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _append_pending(self) -> None:
        fd = self._open()
        if self._cut_tail:
            os.ftruncate(fd, self._size)
        with memoryview(self._pending) as view:
            done = 0
            while done < len(view):  # from the batch's start every time: see module doc
                done += os.pwrite(fd, view[done:], self._size + done)
        os.fdatasync(fd)
        self._cut_tail = False
        self._size += len(self._pending)
        self._records += self._pending_records
        self._pending.clear()
        self._pending_records = 0

    def _write_fresh_file(self) -> None:
        body = bytearray(HEADER)
        body += _meta_record(self._term, self._commit, self._voted)
        for command, idx, term in self._entries:
            body += _entry_record(command, idx, term)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with memoryview(body) as view:
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._close()
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._size = len(body)
        self._records = len(self._entries) + 1
        self._rewrite = self._cut_tail = self._commit_dirty = False
        self._pending.clear()
        self._pending_records = 0


# ---- wiring into pysyncobj -------------------------------------------------------------


def open_journal(
    data_dir: Path, *, on_synced: Callable[[Path, int], None] | None = None
) -> DurableJournal:
    """Load the journal (raising JournalError if it cannot be read), importing
    pysyncobj's own journal once if this data dir has only that."""
    path = data_dir / JOURNAL_FILE
    old = data_dir / OLD_JOURNAL_FILE
    journal = DurableJournal(path, on_synced=on_synced)
    if old.exists() and not path.exists():
        imported = FileJournal(os.fspath(old))
        for i in range(len(imported)):
            journal.add(*imported[i])
        journal.setCurrentTerm(imported.getCurrentTerm(), imported.getVotedForNodeId())
        journal.setRaftCommitIndex(imported.getRaftCommitIndex())
        imported._destroy()
        if not journal.sync():
            assert journal.persist_error is not None
            raise journal.persist_error
        old.rename(old.with_name(OLD_JOURNAL_FILE + ".imported"))
        log.info("raft journal imported from pysyncobj's", entries=len(journal), path=str(path))
    if len(journal) == 0:
        journal.add(_NO_OP, 1, 0)  # what pysyncobj starts an empty journal with
    return journal


def install_journal(syncobj: Any, journal: DurableJournal) -> None:
    """Put our journal where pysyncobj keeps its own, and restore what its constructor
    restores from one (term, vote, commit index). pysyncobj creates its journal inside
    `SyncObj.__init__` from `journalFile` alone, with no hook; this runs before the first
    tick, when nothing but that restore has read the in-memory one it made."""
    for name in ("__raftLog", "__raftCurrentTerm", "__votedForNodeId", "__raftCommitIndex"):
        assert hasattr(syncobj, "_SyncObj" + name), "pysyncobj internals changed"
    syncobj._SyncObj__raftLog = journal
    syncobj._SyncObj__raftCurrentTerm = max(journal.getCurrentTerm(), journal[-1][2])
    syncobj._SyncObj__votedForNodeId = journal.getVotedForNodeId()
    syncobj._SyncObj__raftCommitIndex = journal.getRaftCommitIndex()


def durable_replace(src: str, dst: str) -> bool:
    """pysyncobj's `atomicReplace` for its dump (a compaction's, or a snapshot received
    from the leader), made durable: fsync the file, rename, fsync the directory. The
    journal drops the entries a dump covers only after this returned."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    dir_fd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
