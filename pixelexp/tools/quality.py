"""Time to quality: the training seconds a model needs to reach given test NLLs.

`python -m pixelexp bench --quality` trains `pixel_cnn` and `pixel_rnn` at setting [1]
of `rnn_vs_cnn` and a gated PixelCNN of `pixel_cnn`'s depth and about its parameters on binarized MNIST with
fixed binarization and seed 0 (the `data.*` settings of rnn_vs_cnn: on the mnist-10k
digits, 7,200 train / 800 validation / 2,000 test), each through the same `run(config)`
as an experiment, evaluating the test split after every epoch. It records, per model,
the training seconds (evaluation not counted) and the epoch at which the test NLL first
reached each target (default 100 and 95 nats per image), and stops a model when it has
reached them all, after `--max-epochs`, or when its training time passes `--budget`.
Any `key=value` on the command line changes every model's config (`data.train_limit=...`
for a dry run).
Results go to reports/bench/<device>-quality.{json,md}.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from pixelexp.config import load_experiment, parse_overrides, resolve
from pixelexp.console import log
from pixelexp.data import load_data
from pixelexp.engine.build import make_model
from pixelexp.runs.train import run

QUALITY_MODELS = {  # name: (the rnn_vs_cnn variant it starts from, its own settings)
    "pixel_cnn": ("pixel_cnn-1", {}),
    "pixel_rnn": ("pixel_rnn-1", {}),
    # pixel_cnn-1's depth; 10 channels instead of 16: 25,621 parameters against pixel_cnn's 27,489
    "gated_pixel_cnn": ("pixel_cnn-1", {"model.name": "gated_pixel_cnn", "model.hidden_dims": 10}),
}
TARGETS = (100.0, 95.0)


class Reached(Exception):
    """Every target reached, or the budget spent: the model's run ends here."""


def quality_config(name: str, overrides: dict, experiment: str | Path = "experiments/rnn_vs_cnn.yaml"):
    """The config of one model of the time-to-quality bench."""
    variant, own = QUALITY_MODELS[name]
    exp = load_experiment(experiment)
    start = next(v.config for v in exp.variants if v.name == variant)
    return resolve([start.flat(), own, {"track.sample_count": 0, "data.seed": 0, "train.seed": 0, **overrides}],
                   [str(experiment), "quality bench", "command line"])


def time_to(name: str, overrides: dict, targets: tuple[float, ...], budget: float) -> dict:
    """Train one model until it reaches every target (test nats per image) or the budget
    (training seconds) is spent -> its curve and, per target, when it was reached."""
    cfg = quality_config(name, overrides)
    data = load_data(cfg.data)
    n_train = len(data.train)
    n_parameters = sum(p.numel() for p in make_model(cfg, data.image_shape, data.levels,
                                                     data.num_classes).parameters())
    curve: list[dict] = []
    reached: dict[str, dict] = {}
    trained = 0.0

    def on_epoch(epoch: int, m: dict) -> None:
        nonlocal trained
        trained += n_train / max(m["images_per_second"], 1e-9)  # this epoch's training seconds
        curve.append({"epoch": epoch, "train_seconds": round(trained, 3), "test_nats": m["test_nats"],
                      "elapsed_seconds": round(m["elapsed_hours"] * 3600, 3)})
        for t in targets:
            if m["test_nats"] <= t and str(t) not in reached:
                reached[str(t)] = {"epoch": epoch, "train_seconds": round(trained, 3),
                                   "elapsed_seconds": round(m["elapsed_hours"] * 3600, 3)}
        if len(reached) == len(targets) or trained >= budget:
            raise Reached()

    t0 = time.perf_counter()
    try:
        run(cfg, None, label=name, progress=False, on_epoch=on_epoch)
    except Reached:
        pass
    return {"model": name, "n_parameters": n_parameters, "config": cfg.compared(), "reached": reached,
            "curve": curve, "wall_seconds": round(time.perf_counter() - t0, 1)}


def run_quality(device: str, out: str | Path, targets: tuple[float, ...] = TARGETS, models=tuple(QUALITY_MODELS),
                batch_size: int = 256, precision: str = "auto", impl: str = "fast", max_epochs: int = 50,
                budget: float = 120.0, overrides: list[str] | None = None, command: str = "") -> dict:
    """Time to quality for each model -> the result, also written to <out>/<device>-quality.{json,md}."""
    from pixelexp.engine.build import pick_device
    from pixelexp.tools.bench import device_name
    dev = pick_device(device)
    overrides = {"train.device": dev.type, "train.batch_size": batch_size, "train.precision": precision,
                 "train.epochs": max_epochs, "model.impl": impl, **parse_overrides(list(overrides or []))}
    result = {"device": device_name(dev), "torch": str(torch.__version__), "command": command,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "targets_nats": list(targets), "budget_seconds": budget,
              "settings": overrides, "results": []}
    stem = Path(out) / (re.sub(r"[^a-z0-9]+", "-", result["device"].lower()).strip("-") + "-quality")
    stem.parent.mkdir(parents=True, exist_ok=True)
    for name in models:
        r = time_to(name, {k: v for k, v in overrides.items() if not (k == "model.impl" and "cnn" in name)},
                    targets, budget)
        result["results"].append(r)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
        stem.with_suffix(".md").write_text(quality_markdown(result))
        got = ", ".join(f"{t} nats after {r['reached'][str(t)]['train_seconds']:.1f} s" if str(t) in r["reached"]
                        else f"{t} nats not reached" for t in targets)
        log.info(f"[{name}] {got} (best {min(c['test_nats'] for c in r['curve']):.2f} nats)")
    log.info(f"time to quality -> {stem}.json, {stem}.md")
    return result


def quality_markdown(r: dict) -> str:
    targets = r["targets_nats"]
    lines = [f"# Time to quality on {r['device']}", "",
             f"torch {r['torch']}, {r['date']}; `{r['command']}`", "",
             "Training seconds (evaluation not counted) until the test NLL first reached each target, "
             "in nats per image; binarized MNIST digits (fixed binarization, seed 0).", "",
             "| model | parameters | " + " | ".join(f"to {t:g} nats" for t in targets) + " | best test nats |",
             "|---|---|" + "---|" * len(targets) + "---|"]
    for x in r["results"]:
        cells = [f"{x['reached'][str(t)]['train_seconds']:.1f} s (epoch {x['reached'][str(t)]['epoch']})"
                 if str(t) in x["reached"] else "not reached" for t in targets]
        best = min(c["test_nats"] for c in x["curve"]) if x["curve"] else float("nan")
        lines.append(f"| {x['model']} | {x['n_parameters'] or '-'} | " + " | ".join(cells) + f" | {best:.2f} |")
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in r["settings"].items())]
    return "\n".join(lines) + "\n"


__all__ = ["QUALITY_MODELS", "TARGETS", "run_quality", "time_to", "quality_config"]
