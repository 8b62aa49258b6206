"""One live driver per experiment: an advisory lock (flock) that dies with the process holding it."""
from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path

from data.errors import InputError
from search.storage import Location

LOCK_FILE = ".driver.lock"


class DriverLock:
    """Held while a driver runs a search; a second driver on the same experiment gets an InputError naming the holder.

    The kernel releases a flock when its process ends, however it ends (SIGKILL included), so a dead
    driver's lock file blocks nothing. The lock file is `.driver.lock` in the experiment folder; on a
    shared disk it locks across nodes where the filesystem supports flock (NFSv4, Lustre, most cluster
    filesystems). An experiment on an object store, which has no locks, is locked on this machine only
    (a file under ~/.cache/plugkd/locks named by a hash of the URI).
    """

    def __init__(self, experiment: Location):
        folder = experiment.local
        if folder is None:
            digest = hashlib.sha256(experiment.base.encode()).hexdigest()[:16]
            folder = Path.home() / ".cache" / "plugkd" / "locks" / digest
        folder.mkdir(parents=True, exist_ok=True)
        self.experiment, self.path = experiment.base, folder / LOCK_FILE
        self.handle = None

    def __enter__(self) -> DriverLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(f"{self.experiment}: another driver is running this experiment ({holder}); "
                             "wait for it or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
