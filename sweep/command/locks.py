"""One command at a time per sweep: `sweep run`, `resume` and `score` hold `sweep.lock` in the
sweep's folder while they work; `status` and `report` only read (every table file is written
whole or not at all, so they never see half of one) and need no lock.

The lock names its holder (host, process, command, since when) and carries a heartbeat the
holder refreshes every HEARTBEAT_S seconds. A lock is stale when its process is gone (same
host: no such process, or another one that reused its id) or, for a holder on another host,
when its heartbeat is older than STALE_AFTER_S; a stale lock is taken over with a message.
On a local or shared file system the lock is created exclusively (a hard link, which fails
where the name exists), and so is the right to take over a stale one (a marker named by the
stale lock's token): of two commands that find the same stale lock, one takes it and the other
backs off. Object stores have no such create, so there a command writes its lock, waits
SETTLE_S and reads it back, and backs off if another command's lock replaced it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

import pyarrow.fs

from sweep.plan import storage

LOCK_FILE = "sweep.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 4 * HEARTBEAT_S
SETTLE_S = 1.0
RETRY_S = 1.0


class SweepLocked(Exception):
    """The sweep's lock cannot be taken: another command holds it (the message says who and
    since when), or its storage does not let the lock be read or written."""


def _process_start(pid: int) -> str | None:
    """The process's start time since boot (Linux), telling a process from a later one with the
    same id; None where /proc has no such process or does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return time.time() - float(holder.get("heartbeat", 0)) < STALE_AFTER_S
    pid = int(holder.get("pid", -1))
    if os.path.isdir("/proc"):
        start = _process_start(pid)
        return start is not None and start == holder.get("pid_start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return (f"`sweep {holder.get('command', '?')}` (process {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {since})")


class _Lock:
    def __init__(self, sweep_dir: str, command: str):
        self.sweep_dir = sweep_dir
        self.fs, root = storage.resolve(sweep_dir)
        self.path = f"{root}/{LOCK_FILE}"
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)
        now = time.time()
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                   "command": command, "started": now, "heartbeat": now, "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _read(self, tries: int = 1) -> dict | None:
        """The holder; None when there is no lock, {} when it cannot be parsed (cut short: nobody
        we could wait for). A storage error is raised (after `tries` attempts, RETRY_S apart):
        a lock we cannot read may well be held."""
        for attempt in range(tries):
            try:
                return json.loads(storage.read_bytes(self.fs, self.path))
            except FileNotFoundError:
                return None
            except ValueError:
                return {}
            except OSError:
                if attempt == tries - 1:
                    raise
                time.sleep(RETRY_S)

    def _write(self) -> None:
        data = json.dumps(self.me).encode()
        storage.write_atomic(self.fs, self.path, lambda stream: stream.write(data))

    def _create_exclusive(self, path: str) -> bool:
        """Create `path` holding our lock, whole or not at all: written under a private name, then
        hard-linked to `path` (which fails if it exists), so no reader ever sees half of it."""
        temp = f"{self.path}.{self.me['token']}"
        with open(temp, "w") as f:
            json.dump(self.me, f)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True

    def acquire(self) -> None:
        try:
            self._acquire()
        except OSError as error:
            raise SweepLocked(f"cannot take the lock {self.sweep_dir}/{LOCK_FILE}: {error}; `sweep` needs to read "
                              "and write the sweep's storage: try again when it answers, or check its permissions"
                              ) from None

    def _acquire(self) -> None:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        holder = self._read(tries=3)
        if holder and _alive(holder):
            raise SweepLocked(
                f"{self.sweep_dir} is in use by {describe(holder)}; wait for it to finish or stop it. If that "
                f"process is gone, delete {self.sweep_dir}/{LOCK_FILE}")
        with self._right_to_take_over(holder):
            if holder is not None:
                self._take_over(holder)
            self._create()
        self._beat = threading.Thread(target=self._heartbeat, name="sweep-lock-heartbeat", daemon=True)
        self._beat.start()

    def _create(self) -> None:
        if self.local:
            if not self._create_exclusive(self.path):
                raise self._taken(self._read() or {})
            return
        self._write()
        time.sleep(SETTLE_S)
        holder = self._read() or {}
        if holder.get("token") != self.me["token"]:
            raise self._taken(holder)

    def _take_over(self, stale: dict) -> None:
        """Delete the stale lock, unless another command took it over since we read it."""
        now = self._read(tries=3)
        if now is not None and now.get("token") != stale.get("token"):
            raise self._taken(now)
        print(f"sweep: taking over a stale lock on {self.sweep_dir}"
              + (f" from {describe(stale)}, which is gone" if stale else " (its lock file was unreadable)"),
              file=sys.stderr, flush=True)
        if now is not None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.path)

    @contextlib.contextmanager
    def _right_to_take_over(self, stale: dict | None):
        """On a file system, a marker only one command can create for this stale lock, held until
        our lock is created, so that no command deletes a lock another has just created. A marker
        whose maker died mid-takeover is left to the user: deleting it here could race another
        command that has just made a fresh one."""
        if stale is None or not self.local:
            yield
            return
        marker = f"{self.path}.takeover-{stale.get('token', 'unreadable')}"
        if not self._create_exclusive(marker):
            try:
                maker = json.loads(storage.read_bytes(self.fs, marker))
            except (OSError, ValueError):
                maker = {}
            if maker and not _alive(maker):
                raise SweepLocked(f"a command that was taking over the stale lock on {self.sweep_dir}, "
                                  f"{describe(maker)}, is gone; delete {marker} and try again")
            raise SweepLocked(f"another command is taking over the stale lock on {self.sweep_dir} at this moment; "
                              f"wait for it to finish (if none runs, delete {marker})")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)

    def _taken(self, holder: dict) -> SweepLocked:
        return SweepLocked(f"{self.sweep_dir} was locked by {describe(holder)} a moment ago; wait for it to finish")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # the storage did not answer: beat again next time
                if (self._read() or {}).get("token") != self.me["token"]:
                    return  # taken over (we were thought gone): never write over the new holder
                self.me["heartbeat"] = time.time()
                self._write()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with contextlib.suppress(OSError, ValueError):
            if (self._read() or {}).get("token") == self.me["token"]:
                self.fs.delete_file(self.path)


@contextlib.contextmanager
def holding(sweep_dir: str, command: str):
    """Hold the sweep's lock for a command (raises SweepLocked when another live one holds it)."""
    lock = _Lock(sweep_dir, command)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
