"""MLflow -> pandas -> matplotlib: the comparison report of one experiment call.

`make report EXP=rnn_vs_cnn` reads the newest parent run of that experiment (or the
one given) and its child runs back from the store and writes reports/<name>/:

    bpd_by_epoch.png   train (dashed) and validation (solid) bits/dim of every variant by epoch
    bpd_by_hour.png    the same against wall-clock hours of training
    samples_<variant>.png   the last sample grid of each variant
    summary.csv        one row per variant (with `differences`: how our data and unit differ
                       from those behind the variant's published number, if it has one)
    report.md          the table, "Compared with the papers" and the pictures
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pixelexp.console import log
from pixelexp.errors import UserError, cause
from pixelexp.runs import tracking

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


# ---------------------------------------------------------------------------- comparisons

# What a paper's number on each dataset was measured on: its name and values per subpixel.
PAPER_DATA = {"mnist": ("binarized MNIST", 2), "cifar10": ("CIFAR-10", 256),
              "imagenet32": ("downsampled ImageNet 32x32", 256), "imagenet64": ("downsampled ImageNet 64x64", 256)}
MURRAY = "the standard fixed binarization of Murray & Salakhutdinov (2008) the paper used"
DIFF_SEP = "; "  # joins the lines in summary.csv (no line holds it)


def _param(params: dict, key: str) -> str | None:
    """A logged param as text, None when absent or logged as None."""
    v = params.get(key)
    return None if v is None or str(v) in ("None", "") else str(v)


def _int(params: dict, key: str) -> int | None:
    v = _param(params, key)
    try:
        return int(float(v)) if v is not None else None
    except ValueError:
        return None


def data_differences(params: dict, tags: dict) -> list[str]:
    """Every way a run's data, unit or model differ from what the papers' numbers were measured
    on, one short line each, from the run's params (its flattened config and split sizes) and
    tags (data_source, published.*). Empty when pixelexp knows of no difference."""
    name = _param(params, "data.name")
    source = tags.get("data_source") or name or "?"
    levels = _int(params, "data.levels")
    binarize = _param(params, "data.binarize") or "fixed"
    seed = _param(params, "data.seed") or "0"
    lines = []
    # (a, c) the dataset itself
    if name == "mnist" and source == "mnist-10k":
        lines.append("data: mnist-10k, a subset of 10,000 real MNIST digits (8,000 train / 2,000 test), not the "
                     "full MNIST (60,000 train / 10,000 test): fewer training images and a different test set")
    elif name == "mnist" and source != "mnist":
        lines.append(f"data: {source}, not the full MNIST (60,000 train / 10,000 test images)")
    elif name in ("imagenet32", "imagenet64") and source == name:  # the .npz batches (see data/npz.py)
        s = name[len("imagenet"):]
        lines.append(f"data: ours is the .npz downsampled ImageNet of Chrabaszcz, Loshchilov & Hutter (2017, box "
                     f"resize), not van den Oord et al.'s own downsampled ImageNet (train_{s}x{s}/, valid_{s}x{s}/ "
                     f"PNGs) the PixelRNN paper used: ImageNet resized another way, not the same pixels")
    elif name is not None and name not in PAPER_DATA:
        lines.append(f"data: ours is {source}, none of the papers' datasets (binarized MNIST, CIFAR-10, downsampled "
                     f"ImageNet): the published number is for other data")
    # (a) limits that cut the splits
    train_limit, test_limit = _int(params, "data.train_limit"), _int(params, "data.test_limit")
    if train_limit is not None:
        n = _param(params, "train_size")
        lines.append(f"training set: data.train_limit={train_limit} leaves "
                     f"{f'{int(n):,}' if n and n.isdigit() else f'at most {train_limit:,}'} training images, "
                     f"the paper trained on its whole training set")
    if test_limit is not None:
        n = _param(params, "test_size")
        lines.append(f"test set: data.test_limit={test_limit}, ours is the first "
                     f"{f'{int(n):,}' if n and n.isdigit() else f'{test_limit:,} (at most)'} test images, "
                     f"the paper's number is on its whole test set")
    # (b) binarization of MNIST
    if name == "mnist" and levels == 2:
        how = {"dynamic": f"drawn by pixelexp afresh for every training batch (binarize: dynamic, validation and "
                          f"test drawn once with data.seed={seed})",
               "threshold": "thresholded by pixelexp at intensity 0.5 (binarize: threshold)"}.get(
            binarize, f"drawn by pixelexp, each pixel once from Bernoulli(intensity/255) with data.seed={seed} "
                      f"(binarize: fixed)")
        lines.append(f"binarization: ours is {how}, not {MURRAY}: not the same binary images")
    # (e) values per subpixel and unit
    if name in PAPER_DATA and levels is not None and levels != PAPER_DATA[name][1]:
        paper_name, paper_levels = PAPER_DATA[name]
        lines.append(f"levels: ours models {levels} values per subpixel, the paper's {paper_name} has "
                     f"{paper_levels}: a different distribution, likelihoods not comparable")
    if "published.test_nats" in tags and levels is not None and levels != 2:
        shape = _param(params, "image_shape")
        try:
            dims = int(np.prod([int(d) for d in shape.split("x")])) if shape else None
            paper_bpd = float(tags["published.test_nats"]) / (dims * np.log(2)) if dims else None
        except ValueError:
            paper_bpd = None
        lines.append("unit: the paper's number is nats per image, pixelexp logs nats only for 2-level data"
                     + (f": {float(tags['published.test_nats']):.2f} nats = {paper_bpd:.4f} bits/dim for our "
                        f"{shape} images" if paper_bpd is not None else
                        ", compare bits/dim = nats / (subpixels x ln 2)"))
    # (d) conditioning
    if str(params.get("model.conditional", "")).lower() in ("true", "1", "yes"):
        lines.append("conditioning: ours is class-conditional and reports -log p(x|y), the paper's table "
                     "lists the unconditional -log p(x)")
    return lines


def _published(tags: dict) -> dict[str, float]:
    return {k: float(tags[f"published.{k}"]) for k in ("test_bpd", "test_nats") if f"published.{k}" in tags}


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
        ax.plot(g[x], g["val_bpd"], "-o", color=color, ms=3, label=f"{variant} val")
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
        chosen = lambda k, m=m: m.get(f"best_{k}", m.get(k))  # the epoch chosen on validation
        rows.append({
            "variant": r["name"], "model": p.get("model.name"),
            "hidden_dims": p.get("model.hidden_dims"), "recurrent_length": p.get("model.recurrent_length"),
            "out_hidden_dims": p.get("model.out_hidden_dims"),
            "parameters": int(p["n_parameters"]) if "n_parameters" in p else None,
            "epoch_chosen": str(int(m["best_epoch"])) if "best_epoch" in m else "-",
            "val_bpd": chosen("val_bpd"), "test_bpd": chosen("test_bpd"),
            "val_nats": chosen("val_nats"), "test_nats": chosen("test_nats"),
            "split": "/".join(p.get(f"{s}_size", "?") for s in ("train", "val", "test")),
            "epochs": int(curves[curves.variant == r["name"]]["epoch"].max())
            if (curves.variant == r["name"]).any() else 0,
            "hours": m.get("elapsed_hours"), "images_per_second": m.get("images_per_second"),
            "data_source": r["tags"].get("data_source"), "status": r["status"], "run_id": r["run_id"],
            **{f"paper_{k}": v for k, v in _published(r["tags"]).items()},
            # how our data and unit differ from the paper's, where a paper's number is shown beside ours
            "differences": (DIFF_SEP.join(data_differences(p, r["tags"])) or "none known")
            if _published(r["tags"]) else None,
        })
    return pd.DataFrame(rows)


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def write_markdown(path: Path, name: str, parent: tracking.RunInfo, summary: pd.DataFrame, images: dict[str, str],
                   uri: str) -> None:
    nats = summary["test_nats"].notna().any()
    paper = [c for c in ("paper_test_bpd", "paper_test_nats") if c in summary and summary[c].notna().any()]
    head = ["variant", "parameters", "epoch chosen", "val bits/dim", "test bits/dim"] \
        + (["val nats", "test nats"] if nats else []) \
        + [{"paper_test_bpd": "paper bits/dim", "paper_test_nats": "paper nats"}[c] for c in paper] \
        + ["epochs", "hours", "images/s", "train/val/test images"]
    lines = [f"# {name}", "",
             f"Parent run `{parent.run_id}` ({parent.name}, {parent.status}) in `{uri}`.",
             f"Data: {', '.join(sorted(set(map(str, summary['data_source']))))}. "
             "Bits/dim = nats per image / (subpixels x ln 2); nats per image is the paper's unit for "
             "binarized MNIST. Hours count training and evaluation, not sampling. Val and test numbers are "
             "those of each run's epoch with the lowest validation bits/dim (epoch chosen): models are chosen "
             "on validation, never on test; the curves show train and validation."
             + (" Paper columns: the published test results of the same architecture (days of GPU "
                "training), for orientation; how our data and unit differ from the paper's is listed under "
                "Compared with the papers." if paper else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [r["variant"], _fmt(r["parameters"]), r["epoch_chosen"], _fmt(r["val_bpd"]),
                 _fmt(r["test_bpd"])]
        if nats:
            cells += [_fmt(r["val_nats"], 2), _fmt(r["test_nats"], 2)]
        cells += [_fmt(r[c], 2) for c in paper]
        cells += [_fmt(r["epochs"]), _fmt(r["hours"], 4), _fmt(r["images_per_second"], 0), r["split"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += comparison_section(summary)
    lines += ["", "## Bits/dim by epoch", "", "![bits/dim by epoch](bpd_by_epoch.png)", "",
              "## Bits/dim by wall-clock hour", "", "![bits/dim by hour](bpd_by_hour.png)", "", "## Samples", ""]
    for variant, file in images.items():
        lines += [f"**{variant}**", "", f"![samples of {variant}]({file})", ""]
    path.write_text("\n".join(lines))


def comparison_section(summary: pd.DataFrame) -> list[str]:
    """'## Compared with the papers': each variant with a published number, the two numbers and
    every difference between our data, unit or model and the paper's, one line each."""
    units = {"paper_test_nats": ("test_nats", "nats", 2), "paper_test_bpd": ("test_bpd", "bits/dim", 4)}
    cols = [c for c in units if c in summary]
    rows = [r for _, r in summary.iterrows() if any(pd.notna(r[c]) for c in cols)]
    if not rows:
        return []
    lines = ["", "## Compared with the papers", "",
             "What differs between our runs and the papers' numbers shown beside them (from each run's "
             "settings and data source); the two measure the same quantity only where nothing is listed.", ""]
    for r in rows:
        pairs = [f"paper {_fmt(r[c], d)} {unit}, ours {_fmt(r[ours], d)} {unit}"
                 for c in cols if pd.notna(r[c]) for ours, unit, d in [units[c]]]
        lines += [f"**{r['variant']}** ({'; '.join(pairs)}):", ""]
        diffs = r.get("differences")
        if not isinstance(diffs, str) or diffs == "none known":
            lines += ["- no difference known to pixelexp: same data, unit and model kind as the paper", ""]
        else:
            lines += [f"- {d}" for d in diffs.split(DIFF_SEP)] + [""]
    return lines[:-1]


def make_report(experiment: str, parent_run_id: str | None = None, out_dir: str | Path | None = None) -> Path:
    tracker = tracking.Tracker(experiment, create=False)
    parents = tracker.parent_runs()  # newest first
    if not parents:
        raise UserError(f"experiment {experiment!r} has no experiment runs in {tracker.uri}; "
                        f"run `make experiment EXP={experiment}` first")
    parent = parents[0] if parent_run_id is None else next((p for p in parents if p.run_id == parent_run_id), None)
    if parent is None:
        raise UserError(f"run {parent_run_id!r} is not an experiment run of {experiment!r}; "
                        f"leave it out to report the newest one")
    runs = [asdict(r) for r in tracker.child_runs(parent.run_id)]  # rows, as the tables below take them
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
    log.info(f"report written to {out}/ ({len(runs)} variants)")
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


def sweep_report(name: str, study=None, multi: bool = False, metrics=("val_bpd",), run_log=None,
                 out_dir: str | Path | None = None) -> Path:
    """Optuna's plots and the trials table of a study -> reports/<sweep>/ (and to `run_log`, the
    sweep's parent run, if given)."""
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
            if run_log is not None:
                run_log.log_artifact(out / f"{key}.png", "optuna")
        except Exception as e:  # noqa: BLE001 - too few trials for this plot, etc.
            skipped.append(f"{key} ({cause(e, 120)})")
    if run_log is not None:
        run_log.log_artifact(out / "trials.csv", "optuna")
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
    log.info(f"sweep report written to {out}/")
    return out
