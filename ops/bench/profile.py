"""Optional profiling (`--profile`): py-spy records a web process while a load run measures it.

The raw output (collapsed stacks) is kept next to the JSON results, and `hot_spots` turns it into
the functions that take the most samples, by self time and by total (inclusive) time.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ops.bench.stack import venv_bin

NATIVE = "(no Python frame: granian's Rust runtime, uvloop, or C code)"
# Frames that enclose every request (process start-up, granian's worker bootstrap): ranking them
# by total time says nothing, so the total ranking leaves them out.
_BOOTSTRAP = ("multiprocessing/", "click/", "granian/cli.py", "granian/server/", "(granian)")


@dataclass(frozen=True)
class HotSpot:
    function: str
    self_pct: float
    total_pct: float


def available() -> bool:
    return shutil.which(venv_bin("py-spy")) is not None


@contextlib.contextmanager
def recording(pid: int, output: Path, rate_hz: int = 100) -> Iterator[Path]:
    """Sample `pid` and its children (granian's worker) until the block ends; yields the output path."""
    command = [
        venv_bin("py-spy"), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--nolineno",
        "--rate", str(rate_hz), "--format", "raw", "--output", str(output),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield output
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        _, stderr = process.communicate(timeout=60)
        if process.returncode not in (0, -signal.SIGINT) and not output.exists():
            raise RuntimeError(f"py-spy failed: {stderr.decode(errors='replace')}")


def hot_spots(raw: Path, top: int = 15, *, by: str = "self") -> list[HotSpot]:
    """The `top` functions in py-spy's collapsed stacks, ranked by self time or by total time."""
    own, total, samples = _count(raw)
    if not samples:
        return []
    if by == "self":
        ranking = own.most_common(top)
    else:
        ranking = [(name, n) for name, n in total.most_common() if not any(b in name for b in _BOOTSTRAP)][:top]
    return [HotSpot(name, 100 * own[name] / samples, 100 * total[name] / samples) for name, _ in ranking]


def _count(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """Samples per function as the leaf (self) and anywhere on the stack (total), and all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        count = int(count_text)
        samples += count
        if not frames:
            frames = [NATIVE]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return own, total, samples


def render(title: str, spots: list[HotSpot]) -> str:
    lines = [title, f"{'self %':>7} {'total %':>8}  function"]
    lines += [f"{s.self_pct:7.1f} {s.total_pct:8.1f}  {s.function}" for s in spots]
    return "\n".join(lines)
