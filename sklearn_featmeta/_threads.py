"""CPU threads of a fit: torch's and BLAS / LAPACK's, chosen so that a shared machine does not collapse.

A fit's loops multiply a few thousand support rows by a head of a few
columns: far too little work per call for threads to pay, and OpenMP threads
that spin-wait for a core another process holds make such calls tens of times
slower (measured: ``benchmarks/RESULTS.md``, "speed"). So by default a fit
runs on one thread, and on more only where the passes over the training pool
are large, and then on the cores that are idle when the fit starts.
"""

from __future__ import annotations

import os
import time

PARALLEL_MIN_ENTRIES = 2**24
"""Training pools with fewer entries (rows x features) than this fit on one thread."""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(window: float = 0.05) -> int:
    """Cores of this process's affinity that other processes left idle over ``window`` seconds (at least 1).

    Samples the machine's CPU time twice; where that is not available, all
    cores. This process's own CPU time is not counted as taken: right after
    a fit its OpenMP / BLAS threads still spin-wait for a while, and a
    second fit in the same process (a grid search, a benchmark's repeats)
    would otherwise read them as another process and take one thread.
    """
    cores = _cores()
    first = _busy_jiffies()
    if first is None:
        return cores
    own_start = time.process_time()
    time.sleep(window)
    own_seconds = time.process_time() - own_start
    second = _busy_jiffies()
    total = second[1] - first[1]
    if total <= 0:
        return cores
    own_jiffies = own_seconds * os.sysconf("SC_CLK_TCK")
    others = max(0.0, second[0] - first[0] - own_jiffies)
    busy_cores = others / total * (os.cpu_count() or cores)  # share of all the machine's cores
    return max(1, min(cores, int(cores - busy_cores + 0.5)))


def auto_threads(n_entries: int) -> int:
    """Threads for a fit whose training pool has ``n_entries`` entries (``n_threads=None``)."""
    if n_entries < PARALLEL_MIN_ENTRIES:
        return 1
    return idle_cores()


class fit_threads:
    """Context manager: ``n_threads`` CPU threads for torch, one for BLAS / LAPACK, inside it.

    NumPy's and SciPy's BLAS / LAPACK (the head fits' products, the
    whitening's eigendecomposition) keep their own thread pool, limited
    through threadpoolctl like scikit-learn's own estimators. It gets one
    thread: its threads and torch's spin-waiting OpenMP threads contend for
    the same cores (docs/decisions.md). The previous settings are restored
    on exit.
    """

    def __init__(self, n_threads: int | None):
        self.n_threads = n_threads

    def __enter__(self):
        if self.n_threads is not None:
            import torch
            from threadpoolctl import threadpool_limits

            self._previous = torch.get_num_threads()
            torch.set_num_threads(self.n_threads)
            self._blas_limits = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        if self.n_threads is not None:
            import torch

            self._blas_limits.restore_original_limits()
            torch.set_num_threads(self._previous)
