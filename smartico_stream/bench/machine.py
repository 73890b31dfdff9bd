"""Facts about the machine (CPU, RAM, cores, load) and about live processes (CPU time, RSS)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

from smartico_stream.bench.profiles import LATENCY_SLICE_S


def machine() -> dict[str, Any]:
    """The report's ``machine``: CPUs (all and available to this process), CPU model, RAM, Python,
    platform, and the Kafka client's and librdkafka's versions."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    import confluent_kafka

    return {
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
    }


def load_avg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def core_plan() -> dict[str, list[int] | None]:
    """The core of the process under test (and of a second one), and the cores of the cluster."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return {"service": None, "second": None, "cluster": None, "available": cpus or None}
    return {
        "service": [cpus[0]],
        "second": [cpus[1]],
        "cluster": cpus[1:] if len(cpus) == 2 else cpus[2:],
        "available": cpus,
    }


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        hwm = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        return cpu, hwm
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


async def sample_cpu(pid: int, samples: list[tuple[float, float]]) -> None:
    """Append (wall time, CPU seconds) of a process to ``samples`` twice a second, until cancelled."""
    while True:
        samples.append((time.time(), proc_stat(pid)[0]))
        await asyncio.sleep(0.5)


def cores_per_slice(samples: list[tuple[float, float]], start: float, seconds: float) -> list[float | None]:
    """Cores used in each LATENCY_SLICE_S slice of ``seconds`` from ``start``, from CPU samples."""
    slices: list[float | None] = []
    for first in range(max(1, math.ceil(seconds / LATENCY_SLICE_S))):
        lo, hi = start + first * LATENCY_SLICE_S, start + (first + 1) * LATENCY_SLICE_S
        inside = [s for s in samples if lo <= s[0] <= hi]
        if len(inside) < 2:
            slices.append(None)
            continue
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        slices.append(round((c1 - c0) / (t1 - t0), 2) if t1 > t0 else None)
    return slices


def rss_bytes() -> int:
    """This process's current RSS (its peak where /proc has no VmRSS line)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
