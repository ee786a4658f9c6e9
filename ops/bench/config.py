"""Benchmark settings: one frozen struct built from the command line, passed to every step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """How long and how hard each load run goes, and where results land.

    Every load run is bounded twice: by `duration_s` and by `max_requests` (wrk threads stop
    themselves at their share of the cap; the Python fallback stops at it).
    """

    duration_s: float = 10.0
    warmup_s: float = 2.0
    connections: int = 64
    threads: int = 2
    max_requests: int = 2_000_000
    batch_size: int = 100
    memory_events: int = 20_000
    loadgen: str = "auto"  # auto | wrk | python
    profile: bool = False  # py-spy record the EventFlow rows
    rounds: int = 1  # every scenario this many times, interleaved; each row reports the median round
    wait_quiet_s: float = 0.0  # wait up to this long for other processes to leave the machine idle
    quick: bool = False
    results_dir: Path = field(default=RESULTS_DIR)

    @classmethod
    def quick_run(cls, **overrides: object) -> BenchConfig:
        """A smoke-test run: a few seconds per load run, a small memory sample."""
        values: dict[str, object] = {"duration_s": 3.0, "warmup_s": 1.0, "memory_events": 5_000, "quick": True}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
