"""Freezing a search's trials before its driver is killed, so that a kill lands mid-search on any machine speed."""
from __future__ import annotations

import os
import signal
from pathlib import Path

TRIAL_PROCESS = "ray::ImplicitFu"  # what /proc/<pid>/comm holds for a Ray Tune function trainable's actor (15 chars)


def freeze_trials(session: int) -> list[int]:
    """SIGSTOP every trial actor of the process session `session` (a driver started with start_new_session=True).

    A frozen trial can neither end nor report, so the experiment stays unfinished however fast the machine is,
    while the driver keeps writing its snapshots. Returns the frozen pids (SIGKILL ends them like any other).
    """
    frozen = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        try:
            if os.getsid(pid) != session or not (proc / "comm").read_text().startswith(TRIAL_PROCESS):
                continue
            os.kill(pid, signal.SIGSTOP)
        except (OSError, ProcessLookupError):  # gone meanwhile
            continue
        frozen.append(pid)
    return frozen


def thaw(pids: list[int]) -> None:
    """SIGCONT what freeze_trials stopped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
