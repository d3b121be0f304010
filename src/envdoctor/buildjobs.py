"""How many parallel compile jobs a flash-attn source build can afford.

    MAX_JOBS = max(1, min(usable CPUs, floor(available RAM GiB / 7)))   with NVCC_THREADS = 2

7 GiB a job: the largest single compile process of flash-attn 2.8.3 peaked at 6.6 GiB with
NVCC_THREADS=2 (measured on a 16-core H200 box, shared DOMAIN.md); flash-attn's own estimate is
8–9 GB a job at NVCC_THREADS=4. Available RAM, not total: what other processes hold is not ours.
A 16 GB machine with 12 cores gets 2 jobs (the seed's MAX_JOBS=2); a 128 GB 16-core box gets 16.
"""

from __future__ import annotations

from envdoctor.facts.host import GiB, HostFacts

JOB_GIB = 7
NVCC_THREADS = 2


def flash_attn_jobs(host: HostFacts) -> int:
    avail = host.mem_available if host.mem_available is not None else (host.mem_total or 0)
    if host.mem_limit:
        avail = min(avail, host.mem_limit)
    by_memory = int(avail / GiB // JOB_GIB)
    return max(1, min(host.cpus_usable or 1, by_memory))
