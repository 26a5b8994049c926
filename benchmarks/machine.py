"""What the benchmarks need to know about the machine: cores, memory, and whether others use the CPUs.

With as many threads as cores, any other busy process slows a method 10-100x, so each benchmark waits
for idle CPUs before a method and reports the share other processes took meanwhile.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

# Other processes using more than this share of the CPUs during a method make its numbers unreliable.
BUSY_THRESHOLD = 0.05


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (steal included), from /proc/stat; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_idle(max_wait: float, sample: float = 2.0) -> tuple[float, float]:
    """Wait (up to max_wait s) until other processes use at most BUSY_THRESHOLD of the CPUs.
    Returns (seconds waited, their last measured share)."""
    start, share = time.perf_counter(), 0.0
    while True:
        busy0 = busy_cpu_seconds()
        if busy0 is None:
            return 0.0, 0.0
        time.sleep(sample)
        share = (busy_cpu_seconds() - busy0) / (sample * cores())
        waited = time.perf_counter() - start
        if share <= BUSY_THRESHOLD or waited >= max_wait:
            return waited - sample, share


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0
