"""experiments/<name>.yaml -> one parent MLflow run, one child run per variant.

Everything that can be checked is checked before the parent run is created: the
file and every override (config), the data of every variant (found or fetched), the
device and the models. A bad input then costs nothing and writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pixelexp import tracking
from pixelexp.config import Experiment, load_experiment, yaml_path
from pixelexp.data import load_data
from pixelexp.distributed import setup as setup_distributed
from pixelexp.train import RunResult, make_model, pick_device, run


@dataclass
class ExperimentResult:
    experiment: Experiment
    parent_run_id: str
    child_run_ids: dict[str, str]
    results: dict[str, RunResult]
    report_dir: Path | None
    tracking_uri: str


def preflight(exp: Experiment) -> None:
    for v in exp.variants:
        cfg = v.config
        pick_device(cfg.train.device)
        data = load_data(cfg.data)
        make_model(cfg, data.image_shape, data.levels, data.num_classes)


def run_experiment(path: str | Path, overrides: list[str] | None = None, *, report: bool = True,
                   progress: bool = True, echo=print) -> ExperimentResult:
    overrides = list(overrides or [])
    exp = load_experiment(yaml_path(str(path), "experiments"), overrides)
    preflight(exp)
    ctx = setup_distributed()
    if not ctx.main:  # torchrun: ranks > 0 train along, rank 0 alone tracks and reports
        for v in exp.variants:
            run(v.config, None, label=v.name, progress=False, echo=lambda *a, **k: None)
        return ExperimentResult(exp, "", {}, {}, None, "")
    tracker = tracking.Tracker(exp.name)
    git = tracking.git_state()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    parent = tracker.start_run(f"{exp.name} {stamp}", tags={
        "pixelexp.kind": "experiment", "pixelexp.experiment_file": str(exp.path),
        "pixelexp.overrides": " ".join(overrides) or "(none)", "pixelexp.world_size": ctx.world, **git,
        **({"mlflow.note.content": exp.description} if exp.description else {})})
    parent.log_params({"variants": ",".join(v.name for v in exp.variants),
                       "overrides": " ".join(overrides) or "(none)"})
    parent.log_text((exp.path.read_text()), f"experiment/{exp.path.name}")
    echo(f"experiment {exp.name}: {len(exp.variants)} variants, MLflow store {tracker.uri}, "
         f"parent run {parent.run_id}")
    child_ids, results = {}, {}
    with parent:
        for v in exp.variants:
            child = tracker.start_run(v.name, parent=parent, tags={
                "pixelexp.kind": "variant", "pixelexp.variant": v.name, **git,
                **{f"published.{k}": val for k, val in v.published.items()}})
            child_ids[v.name] = child.run_id
            with child:
                results[v.name] = run(v.config, child, label=v.name, progress=progress, echo=echo)
    report_dir = None
    if report:
        from pixelexp.report import make_report
        report_dir = make_report(exp.name, parent_run_id=parent.run_id, echo=echo)
    echo("")
    echo(f"MLflow store:   {tracker.uri}")
    echo(f"experiment:     {exp.name} (id {tracker.experiment_id})")
    echo(f"parent run:     {parent.run_id}")
    for name, rid in child_ids.items():
        echo(f"  {name:<20} {rid}  test {results[name].metrics['test_bpd']:.4f} bits/dim")
    if report_dir:
        echo(f"report:         {report_dir}/report.md")
    echo("browse it:      make ui   (then open http://127.0.0.1:5000)")
    return ExperimentResult(exp, parent.run_id, child_ids, results, report_dir, tracker.uri)
