"""`make sweep WORKERS=N`: the worker processes of a sweep on this machine.

Each worker is `python -m pixelexp sweep <file> --worker`, a process of its own that
takes queued trials from the shared study until none is left (`sweep.work`). Workers
get one GPU each, round robin, when there are GPUs, and a share of the CPU cores.
A worker that dies leaves its trial RUNNING; the sweep queues it again afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pixelexp.console import log
from pixelexp.studies.sweep_file import Sweep


def _gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def run_workers(sweep: Sweep, overrides: list[str], workers: int, url: str, parent_id: str) -> None:
    """Start `workers` worker processes on the study at `url` and wait for all of them."""
    gpus = _gpus()
    procs = []
    for k in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)  # one worker per GPU
        # Share the CPU cores: N workers x all cores each would oversubscribe them badly.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        cmd = [sys.executable, "-m", "pixelexp", "sweep", str(sweep.path), *overrides,
               "--worker", "--storage", url, "--parent", parent_id]
        procs.append(subprocess.Popen(cmd, env=env))
    log.info(f"{workers} workers started (pids {', '.join(str(p.pid) for p in procs)})")
    for p in procs:
        if p.wait() != 0:
            log.info(f"worker {p.pid} ended with exit code {p.returncode}; its trial is queued again")


__all__ = ["run_workers"]
