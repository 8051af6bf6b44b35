"""A MOUS's work directory: atomic checkpoints and the lock that names the owning batch job."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from arihpc.errors import ArihpcError

LOCK_NAME = "arihpc.lock"
log = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that readers see the old file or the whole new one: temp, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)         # the rename itself survives a crash


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (so that a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(workdir: Path, stage: str) -> Path:
    return workdir / "checkpoints" / f"{stage}.json"


def read_checkpoint(workdir: Path, stage: str) -> dict | None:
    try:
        return json.loads(checkpoint_path(workdir, stage).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_checkpoint(workdir: Path, stage: str, record: dict) -> None:
    checkpoint_path(workdir, stage).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(checkpoint_path(workdir, stage), record)


def drop_checkpoint(workdir: Path, stage: str) -> None:
    checkpoint_path(workdir, stage).unlink(missing_ok=True)


def output_sizes(workdir: Path, folder: str) -> dict[str, int]:
    """Every file under workdir/folder with its size (the outputs a checkpoint records)."""
    root = workdir / folder
    return {str(p.relative_to(workdir)): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file()} if root.is_dir() else {}


class MousLocked(ArihpcError):
    """Another runner holds this MOUS."""


class MousLock:
    """An exclusive lock file in the work directory, refreshed while the runner works."""

    def __init__(self, workdir: Path, owner: str, refresh_s: float, stale_s: float):
        self.path = workdir / LOCK_NAME
        self.owner, self.refresh_s, self.stale_s = owner, refresh_s, stale_s
        self.token = uuid.uuid4().hex          # tells this runner's lock from any other

    def _record(self) -> dict:
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                "token": self.token, "refreshed": time.time()}

    def acquire(self) -> None:
        """Take the lock, or raise MousLocked naming its holder (touching nothing)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = self._holder()
            if time.time() - holder.get("refreshed", 0) < self.stale_s and \
                    not self._holder_dead(holder):
                raise MousLocked(f"arihpc: MOUS is locked by {holder.get('owner')} on "
                                 f"{holder.get('host')} (pid {holder.get('pid')})") from None
            self.path.unlink(missing_ok=True)   # its runner died: refreshes stopped
            return self.acquire()
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
        _REFRESHER.add(self)

    @staticmethod
    def _holder_dead(holder: dict) -> bool:
        """A holder on this host whose process is gone (a killed worker) holds nothing."""
        if holder.get("host") != socket.gethostname() or not holder.get("pid"):
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def refresh(self) -> None:
        write_json_atomic(self.path, self._record())

    def release(self) -> None:
        _REFRESHER.remove(self)         # no refresh writes the file after this
        if self._holder().get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "MousLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _Refresher:
    """One thread per process refreshes every lock its runners hold, each in time. A thread
    per lock cost more than a short MOUS's whole run (its start and join)."""

    def __init__(self) -> None:
        self.due: dict[MousLock, float] = {}    # lock -> when to refresh it (monotonic)
        self.mutex = threading.Lock()           # held while refreshing: release waits
        self.wake = threading.Event()
        self.next_s = math.inf                  # when the thread wakes next (monotonic)
        self.thread: threading.Thread | None = None

    def add(self, lock: MousLock) -> None:
        with self.mutex:
            due = self.due[lock] = time.monotonic() + lock.refresh_s
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="arihpc-lock-refresh")
                self.thread.start()
            elif due < self.next_s:
                self.wake.set()

    def remove(self, lock: MousLock) -> None:
        with self.mutex:
            self.due.pop(lock, None)

    def _run(self) -> None:
        while True:
            with self.mutex:
                now = time.monotonic()
                for lock in [lock for lock, due in self.due.items() if due <= now]:
                    try:
                        lock.refresh()
                    except OSError as e:        # its work directory went: nothing to keep
                        log.warning("cannot refresh %s: %s", lock.path, e)
                    self.due[lock] = now + lock.refresh_s
                self.next_s = min(self.due.values(), default=math.inf)
                self.wake.clear()
            self.wake.wait(None if self.next_s == math.inf else self.next_s - time.monotonic())


_REFRESHER = _Refresher()
