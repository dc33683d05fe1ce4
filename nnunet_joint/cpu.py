"""CPU threading that behaves on a shared machine.

PyTorch's OpenMP runtime (libgomp) lets idle threads spin-wait for work by default. When another
process holds a core — a second training, a test worker, anything — those spinning threads fight
it for the CPU, and every parallel region waits on a thread that is not running. Measured on the
2-core development machine with one other busy process: a plain nnU-Net 2-D forward pass at
128 x 128 took 3.07 s with 2 threads and 0.34 s with 1; with ``OMP_WAIT_POLICY=PASSIVE`` (idle
threads sleep) 0.27 s with 2 threads. The variable must be set before the OpenMP runtime starts,
i.e. before torch is imported, and is inherited by child processes (nnU-Net's commands); an
explicit setting of the user's wins.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "OMP_WAIT_POLICY"


def passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless already set; True when it takes effect in this process
    (torch not imported yet). Children started afterwards inherit it either way."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    return "torch" not in sys.modules


def cpu_threads() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow;
    ``os.cpu_count`` counts the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
