"""CPU accounting from /proc (Linux only; elsewhere the figures are None).

- How busy the rest of the machine was during a load run, a noise indicator for each row: other
  processes (a test suite, a build) compete with the stack for the same cores and distort the
  ratios. It is the CPU time the whole machine spent busy, minus what this process tree used (the
  harness, wrk once reaped, the servers and web processes).
- How much of a core each process under test used, which says where a row's bottleneck is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSample:
    at: float
    busy_ticks: int  # the whole machine
    own_ticks: int  # this process tree


def sample() -> CpuSample | None:
    try:
        return CpuSample(time.monotonic(), _machine_busy(), tree_ticks(os.getpid()))
    except OSError:
        return None


def other_cpu_pct(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Percent of the machine's total CPU capacity used by other processes between two samples."""
    if before is None or after is None or after.at <= before.at:
        return None
    capacity = (after.at - before.at) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
    other = (after.busy_ticks - before.busy_ticks) - (after.own_ticks - before.own_ticks)
    return max(0.0, 100 * other / capacity)


def core_pct(pids: Mapping[str, int], run: Callable[[], T]) -> tuple[T, dict[str, float | None]]:
    """Call `run()` and measure the percent of one core each named process tree used meanwhile."""
    before, started = _ticks_of(pids), time.monotonic()
    result = run()
    after, elapsed = _ticks_of(pids), time.monotonic() - started
    ticks_s = os.sysconf("SC_CLK_TCK") * elapsed
    return result, {name: _pct_of(before[name], after[name], ticks_s) for name in pids}


def _pct_of(before: int | None, after: int | None, ticks: float) -> float | None:
    return None if before is None or after is None else 100 * (after - before) / ticks


def _ticks_of(pids: Mapping[str, int]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, pid in pids.items():
        try:
            out[name] = tree_ticks(pid)
        except (OSError, KeyError):
            out[name] = None
    return out


def _machine_busy() -> int:
    fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal


def tree_ticks(root: int) -> int:
    """utime + stime of `root` and its live descendants, plus what `root`'s reaped children used."""
    stats = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
    ticks = int(stats[root][13]) + int(stats[root][14])  # cutime, cstime: reaped children (wrk)
    return ticks + sum(int(fields[11]) + int(fields[12]) for pid, fields in stats.items()
                       if _descends(pid, root, stats))


def _descends(pid: int, root: int, stats: dict[int, list[str]]) -> bool:
    while pid in stats:
        if pid == root:
            return True
        pid = int(stats[pid][1])  # ppid
    return False


def busy_now(window_s: float = 1.0) -> float | None:
    """Percent of the machine other processes use over the next `window_s` seconds."""
    before = sample()
    time.sleep(window_s)
    return other_cpu_pct(before, sample())


def wait_quiet(max_wait_s: float, threshold_pct: float, window_s: float = 2.0) -> float | None:
    """Wait (up to `max_wait_s`) until other processes use under `threshold_pct` of the machine;
    returns the last figure seen."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_now(window_s)
    while busy is not None and busy >= threshold_pct and time.monotonic() < deadline:
        busy = busy_now(window_s)
    return busy


# -- memory -------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident set size of one process (None when it is gone or /proc is missing)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants."""
    parents: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return [pid for pid in parents if pid == root or _descends(pid, root, {p: ["", str(pp)] for p, pp in
                                                                         parents.items()})]


class PeakRss:
    """Samples the largest process of each named tree every `interval_s` in a thread, keeping the peak:
    for granian that is the worker process that runs the app (its parent only supervises)."""

    def __init__(self, roots: Mapping[str, int], interval_s: float = 0.25) -> None:
        import threading

        self.roots = dict(roots)
        self.peak: dict[str, int | None] = dict.fromkeys(roots)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self.interval_s = interval_s

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for name, root in self.roots.items():
                sizes = [s for s in map(rss_bytes, tree_pids(root)) if s is not None]
                if sizes:
                    self.peak[name] = max(self.peak[name] or 0, max(sizes))
            if self._stop.wait(self.interval_s):
                return

    def peak_mb(self) -> dict[str, float | None]:
        return {name: None if v is None else v / 2**20 for name, v in self.peak.items()}
