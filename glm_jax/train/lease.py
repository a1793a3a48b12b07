"""The lease of a model_dir: one run at a time trains in it.

    with Lease(model_dir, break_lock=False):   # raises RuntimeError when another live run holds the directory
      ...train...

Process 0 writes model_dir/LEASE.json (owner id, host, pid, time) and rewrites it every `refresh_every` seconds
from a daemon thread; a lease whose time is older than `stale_after`, or whose process on this host is gone (a
`kill -9`, a crash: rerunning the command resumes at once), belongs to a dead run and is taken over. A second run
on the same model_dir therefore refuses to start (naming the holder) instead of overwriting the first run's
checkpoints. `break_lock` takes over a live-looking lease (a run that died on another host within `stale_after`).
On exit the lease is removed if it is still this run's. With several processes, process 0 decides and the others
follow (they raise too, so no host waits for a collective alone).

Local directories are claimed with an exclusive create (two runs starting together cannot both win); on an object
store (gs://) the claim is written and read back, which narrows the race to the store's write latency.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

LEASE_FILE = "LEASE.json"


class Lease:
  def __init__(self, model_dir: str, *, break_lock: bool = False, refresh_every: float = 5.0, stale_after=60.0):
    if stale_after <= refresh_every:
      raise ValueError(f"stale_after={stale_after} must exceed refresh_every={refresh_every}")
    self.path = epath.Path(model_dir) / LEASE_FILE
    self.break_lock, self.refresh_every, self.stale_after = break_lock, refresh_every, stale_after
    self.owner = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> dict:
    return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # torn or unreadable: as good as none
      return {}

  def _write(self) -> None:
    text = json.dumps(self._record())
    if "://" in os.fspath(self.path):
      self.path.write_text(text)
      return
    temporary = f"{self.path}.{self.owner}.tmp"
    with open(temporary, "w") as f:
      f.write(text)
    os.replace(temporary, self.path)  # atomic: a reader never sees half a lease

  def _claim_new(self) -> bool:
    """Creates the lease file if there is none; False if one exists."""
    if "://" in os.fspath(self.path):
      if self.path.exists():
        return False
      self._write()
      return True
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(self._record()))
    return True

  def _holder(self, record: dict) -> str:
    age = time.time() - float(record.get("time", 0.0))
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')} (lease refreshed {age:.0f} s ago)"

  @staticmethod
  def _gone(record: dict) -> bool:
    """Whether the holder is a process of this host that no longer runs (a `kill -9`, a crash): its lease is dead
    at once, so rerunning the command right away resumes."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
      return False
    try:
      os.kill(record["pid"], 0)
    except ProcessLookupError:
      return True
    except PermissionError:  # alive, another user's
      return False
    return False

  def _acquire_here(self) -> str | None:
    """Takes the lease (process 0); returns why not, or None."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not self._claim_new():
      record = self._read() or {}
      age = time.time() - float(record.get("time", 0.0))
      if self._gone(record):
        age = float("inf")
      if record and age < self.stale_after and not self.break_lock:
        return (
          f"{self.path.parent} is in use by another run: {self._holder(record)}; wait for it to end, train in "
          f"another --model_dir, or pass --break_lock if that run is dead"
        )
      if age == float("inf"):
        reason = "its process is gone"
      else:
        reason = "broken (--break_lock)" if age < self.stale_after else f"stale ({age:.0f} s old)"
      holder = self._holder(record) if record else "unreadable"
      log.warning("taking over the lease of %s, %s: %s", self.path.parent, reason, holder)
      self._write()
    if (self._read() or {}).get("owner") != self.owner:
      return f"{self.path.parent} was claimed by another run starting at the same time; train in another --model_dir"
    return None

  def __enter__(self) -> "Lease":
    problem = self._acquire_here() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      refused = multihost_utils.broadcast_one_to_all(np.int32(problem is not None))
      if int(refused) and problem is None:
        problem = f"process 0 could not take the lease of {self.path.parent} (see its log)"
    if problem is not None:
      raise RuntimeError(problem)
    if jax.process_index() == 0:
      self._thread = threading.Thread(target=self._refresh, name="glm_jax-lease", daemon=True)
      self._thread.start()
    return self

  def _refresh(self) -> None:
    while not self._stop.wait(self.refresh_every):
      record = self._read() or {}
      if record.get("owner") not in (None, self.owner):
        log.error("the lease of %s was taken over by %s; this run no longer holds it", self.path.parent,
                  self._holder(record))  # fmt: skip
        return
      try:
        self._write()
      except OSError as e:  # a transient storage error: the next refresh tries again
        log.warning("could not refresh the lease of %s: %s", self.path.parent, e)

  def __exit__(self, *exc) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    if (self._read() or {}).get("owner") == self.owner:
      self.path.unlink(missing_ok=True)
