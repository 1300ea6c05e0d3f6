"""`pixelexp jobs` and `pixelexp cancel`: the Slurm jobs this project submitted
(runs/slurm/jobs.jsonl), each with its Slurm state and the MLflow runs and Optuna trials
it is running."""

from __future__ import annotations

from pixelexp.console import log
from pixelexp.runs import tracking
from pixelexp.studies import slurm


def _sweep_lines(record: dict) -> list[str]:
    """The trials a sweep's workers run now, with their array task and MLflow run."""
    from pixelexp.studies.sweep import SLURM_ATTR, load_sweep, open_study
    try:
        study = open_study(load_sweep(record["sweep_file"]), record["storage"])
    except Exception as e:  # noqa: BLE001 - the listing goes on without the study's part
        return [f"    (study not readable: {type(e).__name__})"]
    job = str(record["job"])
    out = []
    for t in study.get_trials(deepcopy=False):
        task = str(t.user_attrs.get(SLURM_ATTR, ""))
        if task.split("_")[0] == job:
            out.append(f"    trial {t.number:<4} {t.state.name.lower():<9} task {task:<12} "
                       f"MLflow run {t.user_attrs.get('mlflow_run_id', '-')}")
    return out


def _experiment_lines(record: dict) -> list[str]:
    """The parent run the job started and its variants' runs."""
    try:
        tracker = tracking.Tracker(record["experiment"], create=False)
        parents = [r for r in tracker.parent_runs() if r.tags.get(slurm.JOB_TAG) == str(record["job"])]
    except Exception as e:  # noqa: BLE001
        return [f"    (MLflow not readable: {type(e).__name__})"]
    out = []
    for p in parents:
        out.append(f"    parent run {p.run_id} {p.status.lower()}")
        out += [f"    {c.tags.get('pixelexp.variant', c.name):<20} run {c.run_id} {c.status.lower()}"
                for c in tracker.child_runs(p.run_id)]
    return out


def list_jobs(limit: int = 20) -> list[str]:
    """Lines describing the newest `limit` submissions."""
    records = slurm.recorded()[-limit:]
    if not records:
        return [f"no Slurm jobs submitted from here ({slurm.jobs_file()} does not exist)"]
    lines = []
    for r in records:
        states = slurm.states(str(r["job"]))
        state = ", ".join(f"{k} {v.lower()}" for k, v in sorted(states.items())) or "ended (Slurm has forgotten it)"
        what = f"sweep {r.get('sweep')}" if r.get("kind") == "sweep" else f"experiment {r.get('experiment')}"
        lines.append(f"job {r['job']}  {what}  submitted {r.get('submitted')}: {state}")
        lines += _sweep_lines(r) if r.get("kind") == "sweep" else _experiment_lines(r)
    return lines


def cancel_jobs(ids: list[str]) -> list[str]:
    """scancel the given jobs, or every recorded one Slurm still runs or queues -> those cancelled."""
    jobs = ids or [str(r["job"]) for r in slurm.recorded()]
    cancelled = slurm.cancel(jobs)
    log.info(f"cancelled Slurm jobs {', '.join(cancelled)}" if cancelled else "no submitted job is queued or running")
    return cancelled


__all__ = ["list_jobs", "cancel_jobs"]
