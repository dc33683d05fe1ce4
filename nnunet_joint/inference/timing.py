"""Where the time of a prediction goes: wall time and peak memory per stage (``--verbose``)."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (10^9 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # macOS: bytes; Linux: KiB


@dataclass
class StageTimer:
    """Records ``(stage, seconds, peak RSS after it)`` for each ``with timer("stage"):`` block.

    Blocks of the same name (a stage run slab by slab) add up in one row, in first-seen order.
    """

    rows: list[tuple[str, float, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds, rss = time.perf_counter() - start, peak_rss_gb()
            for i, (known, before, _) in enumerate(self.rows):
                if known == name:
                    self.rows[i] = (name, before + seconds, rss)
                    break
            else:
                self.rows.append((name, seconds, rss))

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds, _ in self.rows)

    def report(self, title: str, slices: int | None = None) -> str:
        """A table of the stages; with ``slices``, also seconds per slice."""
        width = max([len(name) for name, _, _ in self.rows] + [len("total")])
        lines = [title, f"  {'stage':{width}s} {'seconds':>9s} {'share':>6s} {'peak GB':>8s}"]
        total = self.total or 1e-12
        for name, seconds, rss in self.rows:
            lines.append(f"  {name:{width}s} {seconds:9.2f} {100 * seconds / total:5.1f}% {rss:8.2f}")
        per_slice = f" ({self.total / slices:.3f} s per slice, {slices} slices)" if slices else ""
        lines.append(f"  {'total':{width}s} {self.total:9.2f}{per_slice}")
        return "\n".join(lines)
