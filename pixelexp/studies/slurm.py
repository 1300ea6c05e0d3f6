"""`LAUNCHER=slurm`: sweep workers as one Slurm job array, an experiment as one multi-node job.

Both are plain `sbatch` scripts (written to runs/slurm/, kept next to their output) that
run the same `python -m pixelexp` commands as on one machine, so a job that Slurm
requeues (preemption, a node failure, `scontrol requeue`) simply runs its command again:
a sweep worker takes queued trials (the heartbeat retry queues the one it lost), an
experiment continues its parent run and resumes the unfinished variant from its last
checkpoint. Every submission is recorded in runs/slurm/jobs.jsonl for `pixelexp jobs`
and `pixelexp cancel`.

Slurm options come from a `slurm:` block of the sweep or experiment file and from
`slurm.<key>=<value>` on the command line (which wins), each checked:

    slurm:
      partition: gpu          # sbatch --partition
      account: my-lab         # --account
      time: "4:00:00"         # --time: minutes, or [days-]hours:minutes:seconds
      gpus: 1                 # GPUs per sweep worker, or per node of an experiment
      cpus: 8                 # --cpus-per-task
      mem: 32G                # --mem (per node)
      sbatch: ["--qos=high"]  # any other sbatch options, one per #SBATCH line
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelexp.config import did_you_mean, shown
from pixelexp.console import log
from pixelexp.errors import ConfigError, UserError
from pixelexp.runs.rundir import runs_root

SLURM_KEYS = ("partition", "account", "time", "gpus", "cpus", "mem", "sbatch")
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}(:\d{1,2})?|\d+-\d+(:\d{1,2}){0,2})$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_WORD = re.compile(r"^[A-Za-z0-9_.,:@+-]+$")
RDZV_PORT = 29500  # torchrun's rendezvous on the job's first node
JOB_TAG = "slurm.job"  # MLflow tag of a run started by a Slurm job: its job (or array task) id


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gpus: int = 0
    cpus: int | None = None
    mem: str | None = None
    sbatch: tuple[str, ...] = field(default_factory=tuple)

    def directives(self, gpus_flag: str = "--gpus-per-task") -> list[str]:
        """The #SBATCH lines of these options."""
        lines = [f"--partition={self.partition}" if self.partition else "",
                 f"--account={self.account}" if self.account else "",
                 f"--time={self.time}" if self.time else "",
                 f"{gpus_flag}={self.gpus}" if self.gpus else "",
                 f"--cpus-per-task={self.cpus}" if self.cpus else "",
                 f"--mem={self.mem}" if self.mem else "", *self.sbatch]
        return [f"#SBATCH {line}" for line in lines if line]


def _int(key: str, value: Any, least: int, where: str) -> int:
    try:
        n = int(str(value))
    except ValueError:
        n = None
    if n is None or n < least or isinstance(value, (bool, float)):
        raise ConfigError(f"{where}: slurm.{key}={shown(value)} is not a whole number >= {least}")
    return n


def _checked(key: str, value: Any, where: str) -> Any:
    if key in ("gpus", "cpus"):
        return _int(key, value, 0 if key == "gpus" else 1, where)
    if key == "sbatch":
        items = value if isinstance(value, list) else [value]
        for line in items:
            if not isinstance(line, str) or not line.startswith("--") or "\n" in line:
                raise ConfigError(f"{where}: slurm.sbatch takes sbatch options such as '--qos=high', "
                                  f"got {shown(line)}")
        return tuple(items)
    text = str(value)
    if key == "time" and not _TIME.match(text):
        raise ConfigError(f"{where}: slurm.time={shown(value)} is not a Slurm time limit; give minutes "
                          f"('90') or [days-]hours:minutes[:seconds] ('4:00:00', '1-12:00')")
    if key == "mem" and not _MEM.match(text):
        raise ConfigError(f"{where}: slurm.mem={shown(value)} is not a Slurm memory size such as '32G' or '4000M'")
    if key in ("partition", "account") and not _WORD.match(text):
        raise ConfigError(f"{where}: slurm.{key}={shown(value)} is not a Slurm {key} name")
    return text


def slurm_options(block: Any, overrides: list[str], where: str) -> SlurmOptions:
    """The options of a file's `slurm:` block (at `where`), then `slurm.<key>=<value>`
    overrides from the command line."""
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: slurm must be a mapping of {', '.join(SLURM_KEYS)}; got {shown(block)}")
    given = {**block}
    for o in overrides:
        key, _, value = o.partition("=")
        given[key[len("slurm."):]] = value
    values = {}
    for key, value in given.items():
        if key not in SLURM_KEYS:
            raise ConfigError(f"{where}: slurm.{key} is unknown{did_you_mean(key, SLURM_KEYS)}; "
                              f"known: {', '.join(SLURM_KEYS)}")
        values[key] = _checked(key, value, where)
    return SlurmOptions(**values)


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the run's key=value overrides, the slurm.<key>=<value> ones)."""
    return ([o for o in overrides if not o.startswith("slurm.")], [o for o in overrides if o.startswith("slurm.")])


def require_shared_stores(study_url: str | None, tracking_uri: str) -> None:
    """Refuse stores that jobs on other nodes cannot share, saying what to use instead."""
    if study_url is not None and study_url.startswith("journal:"):
        raise UserError("LAUNCHER=slurm needs the study on a database server: a journal file's locks are not "
                        "reliable on the network file systems Slurm nodes share; give ARGS=\"--storage "
                        "postgresql://user@host/db\" or storage: in the sweep file")
    if study_url is not None and study_url.startswith("sqlite"):
        raise UserError("LAUNCHER=slurm needs the study on a database server: workers on other nodes cannot "
                        "share a SQLite file; give ARGS=\"--storage postgresql://user@host/db\" or storage: "
                        "in the sweep file")
    if not tracking_uri.startswith(("http://", "https://")):
        raise UserError(f"LAUNCHER=slurm needs an MLflow tracking server that every node reaches; "
                        f"MLFLOW_TRACKING_URI is {tracking_uri}: start `mlflow server` (or the docker compose "
                        f"stack) and set MLFLOW_TRACKING_URI=http://<host>:<port>")


def _sbatch() -> str:
    found = shutil.which("sbatch")
    if not found:
        raise UserError("LAUNCHER=slurm needs Slurm's sbatch on this machine: run it on the cluster's login node")
    return found


def jobs_file() -> Path:
    return runs_root() / "slurm" / "jobs.jsonl"


def _python_command(args: list[str]) -> str:
    return shlex.join([sys.executable, "-m", "pixelexp", *args])


def script(name: str, directives: list[str], body: list[str], array: bool = False) -> str:
    """An sbatch script: the job's name, output next to the script (one file per array
    task), requeued on preemption or node failure, then `directives` and the `body` lines."""
    out = runs_root().resolve() / "slurm" / ("%x-%A_%a.out" if array else "%x-%j.out")
    head = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={out}",
            "#SBATCH --open-mode=append", "#SBATCH --requeue", f"#SBATCH --chdir={Path.cwd()}", *directives]
    return "\n".join([*head, "set -euo pipefail",
                      'echo "== $(date -Is) job ${SLURM_JOB_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"',
                      *body]) + "\n"


def submit(name: str, text: str, record: dict) -> str:
    """sbatch the script `text` (kept as runs/slurm/<name>-<time>.sbatch) -> the job id; the
    submission is appended to runs/slurm/jobs.jsonl."""
    sbatch = _sbatch()
    folder = runs_root() / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(text)
    done = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        said = ((done.stderr or done.stdout).strip().splitlines() or ["no reason given"])[-1]
        path.unlink(missing_ok=True)  # not submitted: no script left to mistake for a job's
        raise UserError(f"sbatch refused the job: {said}; check the slurm options (slurm.partition, "
                        f"slurm.account, ...)")
    job = done.stdout.strip().split(";")[0]
    with jobs_file().open("a") as f:
        f.write(json.dumps({"job": job, "name": name, "script": str(path), "cwd": str(Path.cwd()),
                            "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), **record}) + "\n")
    log.info(f"submitted Slurm job {job} ({path}); `python -m pixelexp jobs` lists it, "
             f"`python -m pixelexp cancel` cancels it")
    return job


def submit_and_wait(name: str, text: str, record: dict) -> tuple[str, dict[str, str]]:
    """`submit`, then `wait` -> (job id, final states). An interrupt here leaves the job
    running (it does not depend on this process) and says how to follow or stop it."""
    job = submit(name, text, record)
    try:
        return job, wait(job)
    except BaseException:
        log.warning(f"Slurm job {job} goes on without this process: `python -m pixelexp jobs` shows it, "
                    f"`python -m pixelexp cancel` stops it")
        raise


def sweep_workers_script(name: str, workers: int, opts: SlurmOptions, worker_args: list[str]) -> str:
    """A job array of `workers` sweep workers, each `python -m pixelexp sweep ... --worker`."""
    threads = 'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}"'
    return script(name, [f"#SBATCH --array=0-{workers - 1}", "#SBATCH --ntasks=1", *opts.directives()],
                  [threads, _python_command(worker_args)], array=True)


def experiment_script(name: str, opts: SlurmOptions, nodes: int, per_node: int, args: list[str]) -> str:
    """One job of `nodes` nodes: one torchrun per node (srun), `per_node` processes each,
    meeting at a rendezvous on the first node; one process alone runs without torchrun."""
    directives = [f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1",
                  *opts.directives("--gpus-per-node")]
    if nodes * per_node == 1:
        return script(name, directives, [f"srun {_python_command(args)}"])
    torchrun = shlex.join([sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
                           "--nproc-per-node", str(per_node), "--rdzv-backend", "c10d"])
    return script(name, directives, [
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"',
        f'srun --kill-on-bad-exit=1 {torchrun} --rdzv-endpoint "$head:{RDZV_PORT}" --rdzv-id "$SLURM_JOB_ID" '
        f'-m pixelexp {shlex.join(args)}'])


def states(job: str) -> dict[str, str]:
    """{job, or '<array job>_<task>' for each array task: its Slurm state} of a job Slurm
    still knows (running, queued, or ended less than MinJobAge ago); {} once it forgot it."""
    done = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60)
    out = {}
    for line in done.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        task = fields.get("ArrayTaskId")
        key = f"{fields.get('ArrayJobId', job)}_{task}" if task and task != "N/A" else fields.get("JobId", job)
        out[key] = fields.get("JobState", "UNKNOWN")
    return out


ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


POLL = 5.0  # seconds between two looks at a job's state


def wait(job: str) -> dict[str, str]:
    """Wait until no task of `job` is pending or running, logging each change -> final states."""
    seen: dict[str, str] = {}
    while True:
        now = states(job)
        for task, state in sorted(now.items()):
            if seen.get(task) != state:
                log.info(f"Slurm job {task}: {state.lower()}")
        seen.update(now)
        if not any(s in ACTIVE for s in now.values()):
            return now or seen
        time.sleep(POLL)


def recorded() -> list[dict]:
    """Every submission recorded in runs/slurm/jobs.jsonl, oldest first."""
    path = jobs_file()
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash while it was written
    return out


def cancel(jobs: list[str]) -> list[str]:
    """scancel the given jobs that Slurm still runs or queues -> those cancelled."""
    active = [j for j in jobs if any(s in ACTIVE for s in states(j).values())]
    if active:
        done = subprocess.run(["scancel", *active], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
            raise UserError(f"scancel {' '.join(active)} failed: {said}")
    return active


def job_tag() -> dict[str, str]:
    """{JOB_TAG: this process's job} for a run a Slurm job starts (`pixelexp jobs` finds it by it)."""
    job = worker_job()
    return {JOB_TAG: job} if job else {}


def worker_job() -> str | None:
    """This process's Slurm job ('<array job>_<task>' for an array task), if it is one."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else job


__all__ = ["SLURM_KEYS", "SlurmOptions", "slurm_options", "split_overrides", "require_shared_stores", "submit",
           "submit_and_wait", "sweep_workers_script", "experiment_script", "states", "wait", "recorded", "cancel",
           "job_tag", "worker_job", "JOB_TAG"]
