"""experiments/<name>.yaml -> one parent MLflow run, one child run per variant.

Everything that can be checked is checked before the parent run is created: the
file and every override (config), the data of every variant (found or fetched), the
device and the models. A bad input then costs nothing and writes nothing.

Running the same command again after a crash (or SIGTERM) continues it: the newest
unfinished parent run of the same file content and overrides is reopened, finished
variants are not run again, and an unfinished one resumes from its last checkpoint in
the same child run. `--fresh` starts a new parent run instead.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pixelexp.config import Experiment, load_experiment, shown_path, yaml_path
from pixelexp.console import log
from pixelexp.engine import signals
from pixelexp.engine.distributed import broadcast
from pixelexp.engine.distributed import setup as setup_distributed
from pixelexp.engine.metrics import chosen_line
from pixelexp.engine.trainer import RunResult
from pixelexp.errors import UserError
from pixelexp.runs import provenance, tracking
from pixelexp.runs.rundir import RunDir
from pixelexp.runs.train import preflight, run, time_epoch
from pixelexp.studies import slurm
from pixelexp.studies.progress import StudyClock, Variant


@dataclass
class ExperimentResult:
    experiment: Experiment
    parent_run_id: str
    child_run_ids: dict[str, str]
    results: dict[str, RunResult]
    report_dir: Path | None
    tracking_uri: str


def check_variants(exp: Experiment) -> None:
    """Every variant's device, data and model, before the parent run exists."""
    for v in exp.variants:
        preflight(v.config)


def variant_changes(exp: Experiment) -> dict[str, str]:
    """What sets each variant apart: the settings in which the variants differ, as
    `model.name=pixel_rnn, model.hidden_dims=16` (the description of its run)."""
    flat = {v.name: v.config.flat() for v in exp.variants}
    keys = sorted({k for f in flat.values() for k in f if len({repr(g.get(k)) for g in flat.values()}) > 1})
    return {name: ", ".join(f"{k}={f.get(k)}" for k in keys) or "the experiment's only variant"
            for name, f in flat.items()}


def study_clock(exp: Experiment, previous: dict, timed: bool) -> StudyClock:
    """The clock of the variants still to run; with `timed`, each variant's epoch timed from
    a few steps first, and the study's first estimate printed."""
    todo = [v for v in exp.variants if not (v.name in previous and previous[v.name].status == "FINISHED")]
    clock = StudyClock([Variant(v.name, v.config.train.epochs, v.config.train.epochs,
                                time_epoch(v.config) if timed else None) for v in todo])
    if clock.estimate_line():
        log.info(clock.estimate_line())
    return clock


def find_unfinished(tracker: tracking.Tracker, name: str, sha: str, overrides: str,
                    world: int) -> tracking.RunInfo | None:
    """The newest parent run of this file content and overrides if it did not finish, held
    by this process from here on; a one-line error if another process runs it."""
    for r in tracker.parent_runs():
        t = r.tags
        if (t.get("pixelexp.experiment_sha"), t.get("pixelexp.overrides"), t.get("pixelexp.world_size")) \
                != (sha, overrides, str(world)):
            continue
        if r.status == "FINISHED":
            return None
        run_dir = RunDir.of(r.run_id)
        owner = run_dir.holder()
        if owner:
            raise UserError(f"experiment {name} with these settings is running in process {owner} (parent run "
                            f"{r.run_id}); wait for it to end, or add --fresh to start another parent run")
        run_dir.claim()  # atomic: of two continuations at once, one goes on
        if tracker.run_info(r.run_id).status == "FINISHED":  # its process ended meanwhile
            run_dir.release()
            return None
        return r
    return None


def load(path: str | Path, overrides: list[str]) -> tuple[Experiment, list[str], slurm.SlurmOptions]:
    """The experiment file with its overrides -> (experiment, the run's overrides, its Slurm
    options: the file's slurm: block, then the slurm.<key>= overrides), all checked."""
    overrides, slurm_overrides = slurm.split_overrides(list(overrides))
    exp = load_experiment(yaml_path(str(path), "experiments"), overrides)
    return exp, overrides, slurm.slurm_options(exp.slurm, slurm_overrides, shown_path(exp.path))


def submit_experiment(path: str | Path, overrides: list[str] | None = None, *, nodes: int = 1, gpus: int = 0,
                      per_node: int | None = None, report: bool = True, fresh: bool = False) -> str:
    """Submit the experiment as one Slurm job of `nodes` nodes, `per_node` processes each
    (default: `gpus`, else 1) under torchrun, and wait for it -> the job id. Requeued, the
    job runs the same command, which continues the parent run."""
    exp, overrides, opts = load(path, list(overrides or []))
    opts = replace(opts, gpus=gpus or opts.gpus)
    per_node = per_node or opts.gpus or 1
    slurm.require_shared_stores(None, tracking.tracking_uri())
    if fresh:
        raise UserError("--fresh with LAUNCHER=slurm would start a new parent run at every requeue; "
                        "give the experiment other overrides, or run it once locally with --fresh")
    args = ["experiment", str(exp.path.resolve()), *overrides, "--quiet", *([] if report else ["--no-report"])]
    text = slurm.experiment_script(f"pixelexp-{exp.name}", opts, nodes, per_node, args)
    job, final = slurm.submit_and_wait(f"experiment-{exp.name}", text, {
        "kind": "experiment", "experiment": exp.name, "nodes": nodes, "per_node": per_node})
    state = final.get(job, "UNKNOWN")
    if state != "COMPLETED":
        raise UserError(f"Slurm job {job} ended {state.lower()}; its output is in "
                        f"{slurm.jobs_file().parent}/pixelexp-{exp.name}-{job}.out")
    log.info(f"Slurm job {job} completed: experiment {exp.name} in {tracking.tracking_uri()}")
    return job


def run_experiment(path: str | Path, overrides: list[str] | None = None, *, report: bool = True,
                   progress: bool = True, fresh: bool = False) -> ExperimentResult:
    exp, overrides, _ = load(path, list(overrides or []))
    check_variants(exp)
    signals.check("during start-up; nothing was written")
    ctx = setup_distributed()
    if not ctx.main:  # torchrun: ranks > 0 train along, rank 0 alone tracks and reports
        for v in exp.variants:
            if not broadcast(None, ctx):  # rank 0 says whether this variant runs (or finished before)
                run(v.config, None, label=v.name, progress=False)
        return ExperimentResult(exp, "", {}, {}, None, "")
    tracker = tracking.Tracker(exp.name)
    tracker.describe(exp.description or f"experiment file {exp.path.name}",
                     epochs=max(v.config.train.epochs for v in exp.variants))
    git = provenance.git_state()
    sha = hashlib.sha256(exp.path.read_bytes()).hexdigest()
    over = " ".join(overrides) or "(none)"
    found = None if fresh else find_unfinished(tracker, exp.name, sha, over, ctx.world)
    if found is not None:
        parent = tracker.reopen(found.run_id)
        log.info(f"experiment {exp.name}: continuing parent run {parent.run_id} ({found.status}); "
                 f"`--fresh` starts a new one")
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        parent = tracker.start_run(f"{exp.name} {stamp}", study=True, tags={
            "pixelexp.kind": "experiment", "pixelexp.experiment_file": str(exp.path),
            "pixelexp.experiment_sha": sha, "pixelexp.overrides": over, "pixelexp.world_size": ctx.world, **git,
            **slurm.job_tag(),
            **({"mlflow.note.content": exp.description} if exp.description else {})})
        parent.log_params({"variants": ",".join(v.name for v in exp.variants), "overrides": over})
        parent.log_text((exp.path.read_text()), f"experiment/{exp.path.name}")
        log.info(f"experiment {exp.name}: {len(exp.variants)} variants, MLflow store {tracker.uri}, "
                 f"parent run {parent.run_id}")
    RunDir.of(parent.run_id).claim()
    previous = {}  # variant -> its newest child run, when continuing
    if found is not None:
        for c in tracker.child_runs(parent.run_id):  # oldest first: later ones win
            previous[c.tags.get("pixelexp.variant")] = c
    child_ids, results = {}, {}
    changes = variant_changes(exp)
    clock = study_clock(exp, previous, timed=not ctx.active)
    with parent:
        for v in exp.variants:
            old = previous.get(v.name)
            if broadcast(old is not None and old.status == "FINISHED", ctx):
                log.info(f"[{v.name}] finished before in run {old.run_id}: not run again")
                child_ids[v.name] = old.run_id
                results[v.name] = RunResult(metrics=dict(old.metrics))
                continue
            if old is not None:
                from pixelexp.runs.resume import check_can_resume, prepare
                check_can_resume(tracker, old.run_id)
                ckpt = prepare(tracker, old.run_id, v.config)
                log.info(f"[{v.name}] resuming run {old.run_id} from {ckpt.where if ckpt else 'the start'}")
                clock.resumed(v.name, ckpt.epoch if ckpt else 0)
                child = tracker.reopen(old.run_id)
                child.seed_from_store()
            else:
                ckpt = None
                signals.check(f"before variant {v.name} started")  # between variants: no empty child run
                child = tracker.start_run(v.name, parent=parent, tags={
                    "pixelexp.kind": "variant", "pixelexp.variant": v.name, **git, **slurm.job_tag(),
                    "mlflow.note.content": f"variant {v.name} of experiment {exp.name}: {changes[v.name]}",
                    **{f"published.{k}": val for k, val in v.published.items()}})
            child_ids[v.name] = child.run_id
            clock.started(v.name)
            with child:
                results[v.name] = run(v.config, child, label=v.name, progress=progress, resume=ckpt,
                                      after_epoch=lambda epoch, m, name=v.name: log.info(clock.epoch_done(name, epoch)))
    report_dir = None
    if report:
        from pixelexp.studies.report import make_report
        try:
            with signals.at_once():
                report_dir = make_report(exp.name, parent_run_id=parent.run_id)
        except KeyboardInterrupt:
            raise signals.interrupted(f"while writing reports/{exp.name}/ (every run finished; "
                                      f"`make report EXP={exp.name}` writes it)") from None
    log.info("")
    log.info(f"MLflow store:   {tracker.uri}")
    log.info(f"experiment:     {exp.name} (id {tracker.experiment_id})")
    log.info(f"parent run:     {parent.run_id}")
    for name, rid in child_ids.items():
        log.info(f"  {name:<20} {rid}  {chosen_line(results[name].metrics)}")
    if report_dir:
        log.info(f"report:         {report_dir}/report.md")
    log.info(f"browse it:      make ui, then open {tracker.view_url(tracking.ui_address())}")
    return ExperimentResult(exp, parent.run_id, child_ids, results, report_dir, tracker.uri)
