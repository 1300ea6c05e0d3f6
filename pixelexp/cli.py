"""python -m pixelexp {train,experiment,sweep,resume,rerun,sync,report,sample,bench,receptive-field} ...

Every user error (bad config, missing data, bad checkpoint, bad arguments) ends with
one line on stderr saying what is wrong and how to fix it, and exit code 2.

Each command is a `cmd_<name>(args)` function, registered on its subparser as `func`;
it checks its own options before it starts any work.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from pixelexp.errors import Interrupted, TrackingOutage, UserError, fail

# Commands that take dotted key=value settings after the command name.
TAKES_SETTINGS = frozenset({"train", "experiment", "sweep", "rerun"})
# Commands that train: they finish their batch and checkpoint on SIGINT/SIGTERM; the
# others (bench, report, sample, ...) keep Python's handlers and stop at once.
TRAINS = frozenset({"train", "experiment", "sweep", "resume", "rerun"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pixelexp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one config (a YAML of sections, overrides, or both)",
                       usage="%(prog)s [CONFIG.yaml] [key=value ...] [--experiment NAME] [--quiet]")
    t.add_argument("config", nargs="?", help="YAML file with data/model/train/track sections")
    t.add_argument("--experiment", default="train", help="MLflow experiment name (default: train)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("experiment", help="run every variant of experiments/<name>.yaml",
                       usage="%(prog)s EXPERIMENT [key=value ...] [--no-report] [--quiet]")
    e.add_argument("experiment", help="a name under experiments/ or a path to a YAML file")
    e.add_argument("--no-report", action="store_true", help="skip writing reports/<name>/")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--fresh", action="store_true",
                   help="start a new parent run even if an unfinished one of the same file and settings exists")
    e.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local (default), or slurm: submit it as one Slurm job and wait for it")
    e.add_argument("--nodes", type=int, default=1, help="with --launcher slurm: nodes (default 1)")
    e.add_argument("--gpus", type=int, default=0, help="with --launcher slurm: GPUs per node, one process each")
    e.add_argument("--tasks-per-node", type=int, default=None,
                   help="with --launcher slurm: processes per node (default: --gpus, else 1)")
    e.set_defaults(func=cmd_experiment)

    c = sub.add_parser("resume", help="continue a killed or crashed run from its last checkpoint (same run id)")
    c.add_argument("run_id")
    c.add_argument("--checkpoint", help="resume from this checkpoint file instead of the newest")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_resume)

    a = sub.add_parser("rerun", help="start a new run from exactly the config of a run",
                       usage="%(prog)s RUN_ID [key=value ...] [--quiet]")
    a.add_argument("run_id")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=cmd_rerun)

    y = sub.add_parser("sync", help="send the records a run's journal kept while MLflow was away")
    y.add_argument("folder", help="the run's folder, runs/<run id>")
    y.add_argument("--uri", help="tracking URI (default: the one the run used)")
    y.set_defaults(func=cmd_sync)

    w = sub.add_parser("sweep", help="run the Optuna study of sweeps/<name>.yaml",
                       usage="%(prog)s SWEEP [key=value ...] [--workers N] [--storage URL] [--no-report]")
    w.add_argument("sweep", help="a name under sweeps/ or a path to a YAML file")
    w.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    w.add_argument("--n-trials", type=int, help="override the file's n_trials")
    w.add_argument("--storage", help="Optuna storage URL (default: the file's, else SQLite / journal)")
    w.add_argument("--no-report", action="store_true")
    w.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local processes (default), or slurm: --workers jobs of one Slurm job array")
    w.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--parent", help=argparse.SUPPRESS)
    w.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="write reports/<name>/ from the MLflow store")
    r.add_argument("experiment", nargs="?", help="experiment name (the YAML file's name)")
    r.add_argument("--sweep", help="a sweep's name: report its Optuna study instead")
    r.add_argument("--parent", help="parent run id (default: the newest)")
    r.add_argument("--out", help="output folder (default: reports/<name>)")
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("sample", help="draw samples from a run's final checkpoint")
    s.add_argument("run_id")
    s.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--out", help="PNG path (default: reports/samples/<run id>.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench", help="time training, evaluation and sampling, fast paths vs plain reference")
    b.add_argument("--quick", action="store_true", help="settings [1], 28x28 gray, batch 16, fp32 (CPU: < 2 min)")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument("--models", default=",".join(("pixel_cnn", "pixel_rnn", "row_lstm", "gated_pixel_cnn")),
                   help="comma-separated model names")
    b.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="the fast path's train.compile (default auto: on for CUDA)")
    b.add_argument("--graphs", default="auto", choices=("auto", "on", "off"),
                   help="the fast path's train.cuda_graphs (default auto: on for CUDA)")
    b.add_argument("--no-sample", action="store_true", help="skip the sampling timings")
    b.add_argument("--impl", default="fast", choices=("fast", "triton"),
                   help="the fast path's model.impl (triton: the Diagonal BiLSTM's Triton scan)")
    b.add_argument("--out", default="reports/bench", help="folder for <device>.json and .md")
    b.add_argument("--batches", help="comma-separated batch sizes (default: 16,256,1024 on a GPU, 16,100 on a CPU)")
    b.add_argument("--precisions", help="comma-separated: fp32, bf16 (default both; --quick: fp32)")
    b.add_argument("--images", help="comma-separated: gray28, rgb32 (default both; --quick: gray28)")
    b.add_argument("--settings", help="comma-separated: 1, 2 (rnn_vs_cnn's sizes; default both; --quick: 1)")
    b.add_argument("--sample-n", type=int, help="images per sampling timing (default 100 on a GPU, 16 on a CPU, "
                                                "8 with --quick)")
    b.add_argument("--quality", action="store_true",
                   help="time to quality instead: training seconds until the test NLL reaches --targets "
                        "(pixel_cnn, pixel_rnn, gated_pixel_cnn; first of --batches, --precisions)")
    b.add_argument("--targets", default="100,95", help="with --quality: test nats per image (default 100,95)")
    b.add_argument("--max-epochs", type=int, default=50, help="with --quality: at most this many epochs (default 50)")
    b.add_argument("--budget", type=float, default=120.0,
                   help="with --quality: at most this many training seconds per model (default 120)")
    b.set_defaults(func=cmd_bench)

    u = sub.add_parser("ui", help="serve the MLflow UI of the store; print each experiment's chart view")
    u.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    u.add_argument("--port", type=int, default=None, help="port (default 5000, or PIXELEXP_UI_PORT)")
    u.set_defaults(func=cmd_ui)

    j = sub.add_parser("jobs", help="the Slurm jobs submitted from here, their state, runs and trials")
    j.add_argument("--last", type=int, default=20, help="how many of the newest submissions (default 20)")
    j.set_defaults(func=cmd_jobs)

    k = sub.add_parser("cancel", help="cancel the Slurm jobs submitted from here (or the ones named)")
    k.add_argument("jobs", nargs="*", help="job ids (default: every submitted job still queued or running)")
    k.set_defaults(func=cmd_cancel)

    f = sub.add_parser("receptive-field", help="picture which inputs reach one pixel (from gradients)")
    f.add_argument("model", help="model name, e.g. pixel_cnn, gated_pixel_cnn, diagonal_bilstm")
    f.add_argument("--pixel", default=None, help="i,j of the pixel (default: the centre)")
    f.add_argument("--size", default="15,15", help="H,W of the image (default 15,15)")
    f.add_argument("--layers", type=int, default=3, help="recurrent_length (default 3)")
    f.add_argument("--out", help="PNG path (default: reports/receptive_field/<model>.png)")
    f.set_defaults(func=cmd_receptive_field)
    return p


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Dotted `key=value` overrides may stand anywhere after the command."""
    is_override = lambda a: "=" in a and not a.startswith("-")
    return [a for a in argv if not is_override(a)], [a for a in argv if is_override(a)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as a namespace: the command's options, `func` (the command),
    `overrides` (its key=value settings) and `argv`; a UserError for anything else."""
    rest, overrides = split_overrides(argv)
    args, unknown = build_parser().parse_known_args(rest)
    if unknown:
        from pixelexp.config import shown
        raise UserError(f"unexpected argument {shown(unknown[0])}; settings are given as KEY=VALUE "
                        f"(for example train.lr=3e-4), options as in `python -m pixelexp "
                        f"{args.command} --help`")
    args.overrides = overrides
    args.argv = argv
    if overrides and args.command not in TAKES_SETTINGS and not (args.command == "bench" and args.quality):
        raise UserError(f"{args.command} takes no key=value settings (got {overrides[0]!r})")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        from pixelexp.engine.signals import graceful_stop
        with graceful_stop() if args.command in TRAINS else contextlib.nullcontext():
            try:
                args.func(args)
            finally:
                from pixelexp.engine.distributed import teardown
                teardown()
    except UserError as e:
        return fail(e)
    except (FloatingPointError, TrackingOutage) as e:  # a diverged run (FAILED in MLflow), or the store away
        return fail(e, 1)
    except Interrupted as e:
        again = " (or run the same command again)" if args.command == "experiment" else ""
        print(f"stopped: {e}{again}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _pair(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        from pixelexp.config import shown
        raise UserError(f"{flag} takes two integers like 7,7, got {shown(text)}") from None
    return a, b


def _listed(text: str | None, allowed: dict, flag: str) -> tuple | None:
    """bench's comma-separated choices, as the values `allowed` maps them to."""
    if text is None:
        return None
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UserError(f"bench {flag}: {bad[0] if bad else '(none)'!r} is not one of {', '.join(allowed)}")
    return tuple(allowed[t] for t in items)


def cmd_train(args) -> None:
    """Train one config in a new MLflow run (under torchrun, only rank 0 tracks)."""
    from pixelexp.config import check_name, load_config
    from pixelexp.console import log
    from pixelexp.runs import tracking
    from pixelexp.runs.train import preflight, run

    check_name(args.experiment, "experiment name", "train --experiment")
    cfg = load_config(args.config, args.overrides)
    preflight(cfg)  # before the MLflow run and its folder exist
    from pixelexp.engine.signals import check
    check("during start-up; nothing was written")
    from pixelexp.engine.distributed import setup as setup_distributed
    if not setup_distributed().main:
        run(cfg, None, label=cfg.model.name, progress=False)
        return
    tracker = tracking.Tracker(args.experiment)
    tracker.describe(epochs=cfg.train.epochs)
    run_log = tracker.start_run(f"{cfg.model.name}", tags={"pixelexp.kind": "train"})
    log.info(f"run {run_log.run_id} in {tracker.uri} (experiment {args.experiment})")
    with run_log:
        run(cfg, run_log, label=cfg.model.name, progress=not args.quiet)
    log.info(f"run {run_log.run_id} finished")


def cmd_experiment(args) -> None:
    """Run every variant of an experiment file (or submit it to Slurm)."""
    if args.launcher == "slurm":
        for flag, n, least in (("--nodes", args.nodes, 1), ("--gpus", args.gpus, 0),
                               ("--tasks-per-node", args.tasks_per_node or 1, 1)):
            if n < least:
                raise UserError(f"{flag} must be >= {least}, got {n}")
        from pixelexp.studies.experiment import submit_experiment
        submit_experiment(args.experiment, args.overrides, nodes=args.nodes, gpus=args.gpus,
                          per_node=args.tasks_per_node, report=not args.no_report, fresh=args.fresh)
        return
    if (args.nodes, args.gpus, args.tasks_per_node) != (1, 0, None):
        raise UserError("--nodes, --gpus and --tasks-per-node go with --launcher slurm (LAUNCHER=slurm); "
                        "on this machine use GPUS=N (torchrun)")
    from pixelexp.studies.experiment import run_experiment
    run_experiment(args.experiment, args.overrides, report=not args.no_report,
                   progress=not args.quiet, fresh=args.fresh)


def cmd_sweep(args) -> None:
    """Run a sweep's Optuna study, or (--worker) be one of its worker processes."""
    from pixelexp.studies import sweep
    if args.worker:
        sweep.worker_main(args.sweep, args.overrides, args.storage, args.parent)
        return
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be >= 1, got {args.n_trials}")
    sweep.run_sweep(args.sweep, args.overrides, workers=args.workers, storage=args.storage,
                    report=not args.no_report, n_trials=args.n_trials, launcher=args.launcher)


def cmd_jobs(args) -> None:
    """List the Slurm jobs submitted from here."""
    from pixelexp.console import log
    from pixelexp.studies.jobs import list_jobs
    for line in list_jobs(max(1, args.last)):
        log.info(line)


def cmd_cancel(args) -> None:
    """Cancel Slurm jobs submitted from here."""
    from pixelexp.studies.jobs import cancel_jobs
    cancel_jobs(args.jobs)


def cmd_report(args) -> None:
    """Write the report of an experiment, or (--sweep) of a sweep's study."""
    if args.sweep:
        from pixelexp.studies import sweep
        s = sweep.load_sweep(args.sweep)
        url = sweep.storage_url(s, 1)
        import optuna
        if s.name not in optuna.study.get_all_study_names(sweep.open_storage(url, s.heartbeat)):
            raise UserError(f"no study {s.name!r} in {url}; run `make sweep SWEEP={s.name}` first")
        from pixelexp.studies.report import sweep_report
        sweep_report(s.name, study=sweep.open_study(s, url), multi=s.multi, metrics=s.metrics,
                     out_dir=args.out)
    elif args.experiment:
        from pixelexp.config import check_name
        check_name(args.experiment, "experiment name", "report")
        from pixelexp.studies.report import make_report
        make_report(args.experiment, parent_run_id=args.parent, out_dir=args.out)
    else:
        raise UserError("report needs an experiment name, or --sweep NAME")


def cmd_receptive_field(args) -> None:
    """Draw which input pixels reach one output pixel of a small model."""
    from pixelexp.models import MODELS
    from pixelexp.tools.receptive import receptive_field_image
    single = [m for m in MODELS if m != "multiscale_pixel_rnn"]  # one network each
    if args.model not in single:
        raise UserError(f"receptive-field takes one of: {', '.join(single)}; got {args.model!r}")
    if args.layers < 1:
        raise UserError(f"--layers must be >= 1, got {args.layers}")
    size = _pair(args.size, "--size")
    if min(size) < 1:
        raise UserError(f"--size must be positive, got {args.size}")
    receptive_field_image(args.model, _pair(args.pixel, "--pixel"), size, out=args.out,
                          hidden_dims=8, recurrent_length=args.layers, out_hidden_dims=8)


def cmd_sample(args) -> None:
    """Draw samples from a run's final checkpoint into a PNG."""
    if args.n < 1:
        raise UserError(f"sample: --n must be >= 1, got {args.n}")
    from pixelexp.tools.sample import sample_run
    sample_run(args.run_id, n=args.n, out=args.out, seed=args.seed, device=args.device)


def cmd_bench(args) -> None:
    """Time training, evaluation and sampling, fast paths against the plain reference."""
    from pixelexp.models import MODELS
    from pixelexp.tools.bench import run_bench
    models = tuple(m for m in args.models.split(",") if m)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise UserError(f"bench --models: {bad[0] if bad else '(none)'!r} is not a model; "
                        f"choose from {', '.join(MODELS)}")
    try:
        batches = None if args.batches is None else tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        raise UserError(f"bench --batches takes integers like 16,256, got {args.batches!r}") from None
    if batches is not None and min(batches) < 1:
        raise UserError(f"bench --batches must be positive, got {args.batches!r}")
    if args.sample_n is not None and args.sample_n < 1:
        raise UserError(f"bench --sample-n must be >= 1, got {args.sample_n}")
    if args.quality:
        quality(args, models, batches)
        return
    run_bench(quick=args.quick, device=args.device, out=args.out, models=models, compile_=args.compile,
              graphs=args.graphs, sample=not args.no_sample, impl=args.impl,
              command="python -m pixelexp " + " ".join(args.argv), batches=batches,
              precisions=_listed(args.precisions, {"fp32": "fp32", "bf16": "bf16"}, "--precisions"),
              images=_listed(args.images, {"gray28": "28x28 gray", "rgb32": "32x32 rgb"}, "--images"),
              sets=_listed(args.settings, {"1": 1, "2": 2}, "--settings"), sample_n=args.sample_n)


def quality(args, models: tuple[str, ...], batches: tuple[int, ...] | None) -> None:
    """bench --quality: time to quality of the models it knows."""
    from pixelexp.tools.quality import QUALITY_MODELS, run_quality
    try:
        targets = tuple(float(t) for t in args.targets.split(","))
    except ValueError:
        raise UserError(f"bench --targets takes nats like 100,95, got {args.targets!r}") from None
    if args.max_epochs < 1 or args.budget <= 0:
        raise UserError(f"bench --max-epochs must be >= 1 and --budget > 0, got {args.max_epochs}, {args.budget}")
    chosen = tuple(m for m in models if m in QUALITY_MODELS)
    if not chosen:
        raise UserError(f"bench --quality times {', '.join(QUALITY_MODELS)}; --models names none of them")
    precisions = _listed(args.precisions, {"fp32": "fp32", "bf16": "bf16"}, "--precisions")
    run_quality(args.device, args.out, targets, chosen, batch_size=(batches or (256,))[0],
                precision=precisions[0] if precisions else "auto", impl=args.impl, max_epochs=args.max_epochs,
                budget=args.budget, overrides=args.overrides, command="python -m pixelexp " + " ".join(args.argv))


def cmd_ui(args) -> None:
    """Serve the MLflow UI until stopped, with the address of each experiment's chart view."""
    if args.port is not None and not 0 < args.port < 65536:
        raise UserError(f"ui --port must be a port number (1-65535), got {args.port}")
    from pixelexp.tools.ui import serve
    serve(args.host, args.port)


def cmd_resume(args) -> None:
    """Continue a killed or crashed run from its checkpoint, under the same run id."""
    from pixelexp.runs.resume import resume_run
    resume_run(args.run_id, checkpoint_path=args.checkpoint, progress=not args.quiet)


def cmd_rerun(args) -> None:
    """Start a new run from the config of a run, with any key=value settings on top."""
    from pixelexp.runs.resume import rerun
    rerun(args.run_id, args.overrides, progress=not args.quiet)


def cmd_sync(args) -> None:
    """Send the records a run's journal kept while the tracking store was away."""
    from pixelexp.runs.tracking import sync
    sync(args.folder, uri=args.uri)
