"""Continue a run from its last checkpoint (`resume`), or start a new run from exactly
its config (`rerun`).

    python -m pixelexp resume <run id> [--checkpoint PATH]
    python -m pixelexp rerun <run id> [key=value ...]

Everything is checked before the run is touched: the run exists and is not finished or
still running, the checkpoint is readable, ours, of this run's model and data. A bad
input is one line and exit code 2, and nothing is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from pixelexp.config import Config, config_from_dict, parse_overrides, resolve
from pixelexp.console import log
from pixelexp.data import load_data
from pixelexp.engine import checkpoint, signals
from pixelexp.engine.build import make_model
from pixelexp.engine.metrics import chosen_line
from pixelexp.engine.trainer import RunResult
from pixelexp.errors import CheckpointError, UserError, first_line
from pixelexp.runs import provenance, rundir, tracking
from pixelexp.runs.rundir import RunDir
from pixelexp.runs.train import check_resumable, preflight, run


def run_config(tracker: tracking.Tracker, run_id: str) -> Config:
    """The resolved config a run was started with (its folder, else its MLflow artifact)."""
    local = RunDir.of(run_id).config
    if local.is_file():
        text, where = local.read_text(), str(local)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                text = tracking.download(run_id, rundir.CONFIG, tmp, tracker.uri).read_text()
            except UserError:
                raise UserError(f"run {run_id} has no config.yaml (neither in {local} nor in MLflow): "
                                f"it is not a pixelexp training run, or it was killed before it started") from None
        where = f"run {run_id} config.yaml"
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        tree = None
    if not isinstance(tree, dict):
        raise UserError(f"{where} is damaged (not a mapping of settings); restore it from the run's MLflow "
                        f"artifact config.yaml, or start a new run")
    return config_from_dict(tree, where)


def _load_latest(run_id: str, uri: str) -> checkpoint.Checkpoint | None:
    """The newest checkpoint of a run: its folder first, else its MLflow artifact
    checkpoints/last.pt, kept in its folder from then on."""
    kept = checkpoint.CheckpointDir(RunDir.of(run_id).checkpoints)
    latest = kept.latest()
    if latest is not None:
        return checkpoint.load(latest)
    if rundir.LAST not in [Path(p).name for p in tracking.list_artifacts(run_id, rundir.CHECKPOINTS, uri)]:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint.load(tracking.download(run_id, rundir.LAST_ARTIFACT, tmp, uri))
        ckpt.save(kept.path(ckpt.train_state["step"]))
    return ckpt


def prepare(tracker: tracking.Tracker, run_id: str, cfg: Config,
            explicit: str | None = None) -> checkpoint.Checkpoint | None:
    """The checkpoint to resume a run from (None: from the start), checked against its config."""
    if explicit:
        ckpt = checkpoint.load(explicit)
        if ckpt.run_id not in (None, run_id):
            raise CheckpointError(f"{explicit} is a checkpoint of run {ckpt.run_id}, not of {run_id}; "
                                  f"give one from {RunDir.of(run_id).checkpoints}/")
    else:
        ckpt = _load_latest(run_id, tracker.uri)
    if ckpt is None:
        return None
    data = load_data(cfg.data)
    check_resumable(cfg, ckpt, data)
    try:
        make_model(cfg, data.image_shape, data.levels, data.num_classes).load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.where}: its weights do not fit the model of the run's config "
                              f"({first_line(e)})") from None
    return ckpt


def check_can_resume(tracker: tracking.Tracker, run_id: str) -> tracking.RunInfo:
    """Hold the run for this process (atomic: of two resumes at once, one goes on and one
    gets a line naming the other), then read its state -> the run: a run another
    process finished meanwhile is not resumed."""
    run_dir = RunDir.of(run_id)
    run_dir.claim()
    info = tracker.run_info(run_id)
    if info.status == "FINISHED":
        run_dir.release()
        raise UserError(f"run {run_id} has finished; `python -m pixelexp rerun {run_id}` starts a new run "
                        f"from its config")
    return info


def resume_run(run_id: str, *, checkpoint_path: str | None = None, progress: bool = True) -> RunResult:
    tracker = tracking.Tracker.of_run(run_id)
    info = check_can_resume(tracker, run_id)
    cfg = run_config(tracker, run_id)
    preflight(cfg)  # the machine can still hold it: checked before the run is reopened
    ckpt = prepare(tracker, run_id, cfg, checkpoint_path)
    label = info.name or cfg.model.name
    signals.check(f"during start-up; run {run_id} was not touched")
    log.info(f"resuming run {run_id} ({label}) in {tracker.uri} from "
             f"{ckpt.where if ckpt else 'the start (no checkpoint was written)'}")
    run_log = tracker.reopen(run_id)
    run_log.seed_from_store()
    with run_log:
        result = run(cfg, run_log, label=label, progress=progress, resume=ckpt)
    log.info(f"run {run_id} finished: {chosen_line(result.metrics)}")
    return result


def rerun(run_id: str, overrides: list[str] | None = None, *, progress: bool = True) -> str:
    """A new run (in the same MLflow experiment) from a run's exact config -> its id."""
    tracker = tracking.Tracker.of_run(run_id)
    info = tracker.run_info(run_id)
    cfg = run_config(tracker, run_id)
    if overrides:
        cfg = resolve([cfg.flat(), parse_overrides(overrides)], [f"run {run_id} config", "command line"])
    preflight(cfg)
    signals.check("during start-up; nothing was written")
    then, now = info.tags.get("git_commit"), provenance.git_state()["git_commit"]
    if then and then != now:
        log.info(f"note: run {run_id} ran commit {then[:10]}, this checkout is {now[:10]}")
    name = f"{info.name or cfg.model.name} (rerun)"
    run_log = tracker.start_run(name, tags={"pixelexp.kind": "rerun", "pixelexp.rerun_of": run_id,
                                            "pixelexp.overrides": " ".join(overrides or []) or "(none)"})
    log.info(f"rerun of {run_id}: new run {run_log.run_id} in {tracker.uri}")
    with run_log:
        result = run(cfg, run_log, label=name, progress=progress)
    log.info(f"run {run_log.run_id} finished: {chosen_line(result.metrics)}")
    return run_log.run_id


__all__ = ["resume_run", "rerun", "run_config", "prepare", "check_can_resume"]
