"""CPU threads: how many torch uses, and whether another heavy process is competing for the cores.

Two torch processes on a 2-core machine each spawn a thread per core: they slow each other
down ten-fold or more. :func:`configure_threads` picks torch's intra-op thread count (the
cores this process may run on, or ``--threads`` / ``$LORADEX_THREADS``), and
:func:`competing_process` finds another process that kept a core busy while it watched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .devices import available_cpus
from .errors import ConfigError

THREADS_ENV = "LORADEX_THREADS"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads``, else ``$LORADEX_THREADS``, else the usable cores."""
    import torch

    if threads is None and os.environ.get(THREADS_ENV):
        raw = os.environ[THREADS_ENV]
        try:
            threads = int(raw)
        except ValueError:
            raise ConfigError(f"${THREADS_ENV}={raw!r} is not a whole number of threads") from None
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    chosen = threads or available_cpus()
    if torch.get_num_threads() != chosen:
        torch.set_num_threads(chosen)
    return chosen


def _processes() -> dict[int, tuple[str, int, int]]:
    """Per pid: command name, parent pid, and CPU ticks used so far (user + system), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "; the name may hold spaces
        found[int(entry.name)] = (stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[1]),
                                  int(fields[11]) + int(fields[12]))
    return found


def _family(processes: dict[int, tuple[str, int, int]]) -> set[int]:
    """This process and its descendants (data-loading workers), whose load is our own."""
    family, grown = {os.getpid()}, True
    while grown:
        children = {pid for pid, (_, parent, _) in processes.items() if parent in family} - family
        family |= children
        grown = bool(children)
    return family


def competing_process(*, watch: float = 0.3, threshold: float = 0.5) -> str | None:
    """A line naming another process that used at least ``threshold`` of a core over ``watch`` seconds."""
    if not Path("/proc/stat").is_file():
        return None
    before = _processes()
    time.sleep(watch)
    after = _processes()
    hertz = os.sysconf("SC_CLK_TCK")
    family = _family(after)
    busy = sorted(((ticks - before[pid][2]) / hertz / watch, pid, name) for pid, (name, _, ticks) in after.items()
                  if pid in before and pid not in family)
    if not busy or busy[-1][0] < threshold:
        return None
    load, pid, name = busy[-1]
    cores = available_cpus()
    return (f"another process is busy on this machine's {cores} cores ({name}, pid {pid}, {load:.1f} cores): "
            "two torch processes sharing the cores can each run 10x slower; wait for it, or give each "
            f"--threads {max(1, cores // 2)}")
