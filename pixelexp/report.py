"""MLflow -> pandas -> matplotlib: the comparison report of one experiment call.

`make report EXP=rnn_vs_cnn` reads the newest parent run of that experiment (or the
one given) and its child runs back from the store and writes reports/<name>/:

    bpd_by_epoch.png   train (dashed) and test (solid) bits/dim of every variant by epoch
    bpd_by_hour.png    the same against wall-clock hours of training
    samples_<variant>.png   the last sample grid of each variant
    summary.csv        one row per variant
    report.md          the table and the pictures
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pixelexp import tracking  # noqa: E402
from pixelexp.errors import UserError  # noqa: E402

CURVES = ["train_bpd", "val_bpd", "test_bpd", "elapsed_hours"]


_SAMPLE_IMAGE = re.compile(r"^samples[+%]step[+%](\d+)[+%]timestamp[+%]\d+[+%][^+%]+\.png$")


def last_sample_image(run_id: str, uri: str) -> str | None:
    """Artifact path of the highest-step image logged with key 'samples'
    (MLflow names them `samples+step+<step>+timestamp+<ms>+<uuid>.png`)."""
    best = None
    for path in tracking.list_artifacts(run_id, "images", uri=uri):
        m = _SAMPLE_IMAGE.match(Path(path).name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), path)
    return best and best[1]


def histories(runs: list[dict], uri: str) -> pd.DataFrame:
    """One row per (variant, epoch) with every curve as a column."""
    frames = []
    for r in runs:
        h = tracking.metric_history(r["run_id"], CURVES, uri=uri)
        if h.empty:
            continue
        wide = h.pivot_table(index="step", columns="key", values="value").reset_index()
        wide.insert(0, "variant", r["name"])
        frames.append(wide)
    if not frames:
        return pd.DataFrame(columns=["variant", "step", *CURVES])
    return pd.concat(frames, ignore_index=True).rename(columns={"step": "epoch"})


def plot_curves(df: pd.DataFrame, x: str, xlabel: str, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (variant, g) in enumerate(df.groupby("variant", sort=False)):
        color = colors[k % len(colors)]
        g = g.sort_values("epoch")
        ax.plot(g[x], g["test_bpd"], "-o", color=color, ms=3, label=f"{variant} test")
        ax.plot(g[x], g["train_bpd"], "--", color=color, alpha=0.7, label=f"{variant} train")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("bits/dim (NLL)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarize(runs: list[dict], curves: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in runs:
        m, p = r["metrics"], r["params"]
        rows.append({
            "variant": r["name"], "model": p.get("model.name"),
            "hidden_dims": p.get("model.hidden_dims"), "recurrent_length": p.get("model.recurrent_length"),
            "out_hidden_dims": p.get("model.out_hidden_dims"),
            "parameters": int(p["n_parameters"]) if "n_parameters" in p else None,
            "val_bpd": m.get("val_bpd"), "test_bpd": m.get("test_bpd"),
            "val_nats": m.get("val_nats"), "test_nats": m.get("test_nats"),
            "epochs": int(curves[curves.variant == r["name"]]["epoch"].max())
            if (curves.variant == r["name"]).any() else 0,
            "hours": m.get("elapsed_hours"), "images_per_second": m.get("images_per_second"),
            "data_source": r["tags"].get("data_source"), "status": r["status"], "run_id": r["run_id"],
            **{f"paper_{k}": float(r["tags"][f"published.{k}"]) for k in ("test_bpd", "test_nats")
               if f"published.{k}" in r["tags"]},
        })
    return pd.DataFrame(rows)


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def write_markdown(path: Path, name: str, parent: dict, summary: pd.DataFrame, images: dict[str, str],
                   uri: str) -> None:
    nats = summary["test_nats"].notna().any()
    paper = [c for c in ("paper_test_bpd", "paper_test_nats") if c in summary and summary[c].notna().any()]
    head = ["variant", "parameters", "val bits/dim", "test bits/dim"] + (["val nats", "test nats"] if nats else []) \
        + [{"paper_test_bpd": "paper bits/dim", "paper_test_nats": "paper nats"}[c] for c in paper] \
        + ["epochs", "hours", "images/s"]
    lines = [f"# {name}", "",
             f"Parent run `{parent['run_id']}` ({parent['name']}, {parent['status']}) in `{uri}`.",
             f"Data: {', '.join(sorted(set(map(str, summary['data_source']))))}. "
             "Bits/dim = nats per image / (subpixels x ln 2); nats per image is the paper's unit for "
             "binarized MNIST. Hours count training and evaluation, not sampling."
             + (" Paper columns: the published test results of the same architecture (full datasets, "
                "days of GPU training), for orientation." if paper else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [r["variant"], _fmt(r["parameters"]), _fmt(r["val_bpd"]), _fmt(r["test_bpd"])]
        if nats:
            cells += [_fmt(r["val_nats"], 2), _fmt(r["test_nats"], 2)]
        cells += [_fmt(r[c], 2) for c in paper]
        cells += [_fmt(r["epochs"]), _fmt(r["hours"], 4), _fmt(r["images_per_second"], 0)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## Bits/dim by epoch", "", "![bits/dim by epoch](bpd_by_epoch.png)", "",
              "## Bits/dim by wall-clock hour", "", "![bits/dim by hour](bpd_by_hour.png)", "", "## Samples", ""]
    for variant, file in images.items():
        lines += [f"**{variant}**", "", f"![samples of {variant}]({file})", ""]
    path.write_text("\n".join(lines))


def make_report(experiment: str, parent_run_id: str | None = None, out_dir: str | Path | None = None,
                echo=print) -> Path:
    tracker = tracking.Tracker(experiment, create=False)
    parents = tracker.parent_runs()
    if parents.empty:
        raise UserError(f"experiment {experiment!r} has no experiment runs in {tracker.uri}; "
                        f"run `make experiment EXP={experiment}` first")
    if parent_run_id is None:
        parent = parents.iloc[0].to_dict()
    elif parent_run_id in set(parents.run_id):
        parent = parents[parents.run_id == parent_run_id].iloc[0].to_dict()
    else:
        raise UserError(f"run {parent_run_id!r} is not an experiment run of {experiment!r}; "
                        f"leave it out to report the newest one")
    runs = tracker.child_runs(parent["run_id"])
    out = Path(out_dir or Path("reports") / experiment)
    out.mkdir(parents=True, exist_ok=True)
    curves = histories(runs, tracker.uri)
    curves.to_csv(out / "curves.csv", index=False)
    plot_curves(curves, "epoch", "epoch", out / "bpd_by_epoch.png", f"{experiment}: bits/dim by epoch")
    plot_curves(curves, "elapsed_hours", "wall-clock hours (training + evaluation)",
                out / "bpd_by_hour.png", f"{experiment}: bits/dim by hour")
    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            art = last_sample_image(r["run_id"], tracker.uri)
            if art is None:
                continue
            local = tracking.download(r["run_id"], art, tmp, uri=tracker.uri)
            file = f"samples_{r['name']}.png"
            _upscaled_copy(local, out / file)
            images[r["name"]] = file
    summary = summarize(runs, curves)
    summary.to_csv(out / "summary.csv", index=False)
    write_markdown(out / "report.md", experiment, parent, summary, images, tracker.uri)
    echo(f"report written to {out}/ ({len(runs)} variants)")
    return out


def _upscaled_copy(src: Path, dst: Path, factor: int = 3) -> None:
    from PIL import Image

    from pixelexp.images import save_png, upscale
    save_png(upscale(np.asarray(Image.open(src).convert("RGB")), factor), dst)


# ---------------------------------------------------------------------------- sweeps

SWEEP_PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "intermediate_values": "plot_intermediate_values",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def sweep_report(name: str, study=None, multi: bool = False, metrics=("val_bpd",), log=None,
                 out_dir: str | Path | None = None, echo=print) -> Path:
    """Optuna's plots and the trials table of a study -> reports/<sweep>/ (and the parent run)."""
    import warnings

    import optuna.visualization.matplotlib as vis

    out = Path(out_dir or Path("reports") / name)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.trials_dataframe(attrs=("number", "state", "value" if not multi else "values", "params",
                                           "duration", "user_attrs"))
    trials.to_csv(out / "trials.csv", index=False)
    plots = dict(SWEEP_PLOTS)
    if multi:
        plots = {"pareto_front": "plot_pareto_front", "parallel_coordinate": "plot_parallel_coordinate"}
    written, skipped = [], []
    for key, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = {"target_names": list(metrics)} if key == "pareto_front" else (
                    {"target": (lambda t, k=0: t.values[k]), "target_name": metrics[0]} if multi else {})
                ax = getattr(vis, fn)(study, **kwargs)
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / f"{key}.png", dpi=110)
            plt.close(fig)
            written.append(key)
            if log is not None:
                log.log_artifact(out / f"{key}.png", "optuna")
        except Exception as e:  # noqa: BLE001 - too few trials for this plot, etc.
            skipped.append(f"{key} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    if log is not None:
        log.log_artifact(out / "trials.csv", "optuna")
    lines = [f"# sweep {name}", "", f"{len(study.trials)} trials. Study objective(s): {', '.join(metrics)}.", ""]
    if not multi and any(t.state.name == "COMPLETE" for t in study.trials):
        bt = study.best_trial
        lines += [f"Best: trial {bt.number}, {metrics[0]} = {bt.value:.4f}, params {bt.params}.", ""]
    elif multi:
        lines += [f"Pareto front: trials {[t.number for t in study.best_trials]}.", ""]
    cols = [c for c in trials.columns if c in ("number", "state", "value") or c.startswith(("values", "params_"))]
    lines += ["| " + " | ".join(c.replace("params_", "") for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in trials[cols].iterrows():
        lines.append("| " + " | ".join(_fmt(v) if not isinstance(v, float) else f"{v:.4g}" for v in r) + " |")
    lines.append("")
    for key in written:
        lines += [f"## {key.replace('_', ' ')}", "", f"![{key}]({key}.png)", ""]
    if skipped:
        lines += ["Not drawn: " + "; ".join(skipped), ""]
    (out / "report.md").write_text("\n".join(lines))
    echo(f"sweep report written to {out}/")
    return out
