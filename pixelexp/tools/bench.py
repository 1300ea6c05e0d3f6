"""python -m pixelexp bench [--quick]: how fast each model trains, evaluates and samples,
on the fast paths and on the plain reference, in one run.

For each model (pixel_cnn, pixel_rnn, row_lstm, gated_pixel_cnn) at settings [1] and
[2] of experiments/rnn_vs_cnn.yaml, each image kind (28x28 gray, 2 levels; 32x32 RGB,
256 levels), batch size (16, 256, 1024 on a GPU; 16 and 100 on a CPU) and precision
(fp32, bf16) it measures:

  train images/s    the trainer's step: forward + backward (`fast.GradStep`: a CUDA
                    graph replay where train.cuda_graphs is on), gradient norm and loss
                    read back, RMSprop step
  eval images/s     the trainer's evaluation step: log-likelihood without gradients
                    (`fast.EvalStep`: a CUDA graph replay likewise)
  sample images/s   the model's fast sampler (`fast.sample`: on a GPU replayed as a CUDA
                    graph, timed after the capturing first call, which is reported too),
                    and the naive one (--sample-n images; default 100 on a GPU, 16 on a
                    CPU, 8 with --quick) (the whole image through the model for every
                    subpixel; on CPUs timed on the first rows and scaled to the image,
                    since every step costs the same)
  peak memory       CUDA: max allocated by each version in that case (the fast one's
                    graphs freed before the plain one runs); CPU: the process's peak
                    resident memory so far (it only grows through the run: no ratio)
  FLOP/s            FLOPs of one training step (torch's FlopCounterMode) / its time,
                    against the device's peak (a large matmul measured in the same run);
                    the fast scans also compute the skew's padding, so their FLOPs differ

beside the plain version of the same model (model.impl=plain, fp32, eager) and as a
ratio to it. Timers are device-synchronized; warm-up steps are not timed; figures are
medians of repeats. `--quick` (under 2 minutes on a CPU): settings [1], 28x28 gray,
fp32 only (on a GPU batch 16 only). Results: reports/bench/<device>.json and .md.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pixelexp.config import DataConfig, load_experiment, yaml_path
from pixelexp.console import log
from pixelexp.engine import fast
from pixelexp.errors import UserError
from pixelexp.models import build_model, set_impl

MODELS = ("pixel_cnn", "pixel_rnn", "row_lstm", "gated_pixel_cnn")
IMAGES = {"28x28 gray": ((1, 28, 28), 2), "32x32 rgb": ((3, 32, 32), 256)}


@dataclass(frozen=True)
class Case:
    model: str
    setting: int  # 1 or 2: rnn_vs_cnn's sizes
    image: str
    batch: int
    precision: str


def settings() -> dict[int, dict]:
    """Settings [1] and [2] of rnn_vs_cnn: the first two variants' model sizes."""
    exp = load_experiment(yaml_path("rnn_vs_cnn", "experiments"), [])
    out = {}
    for k, v in enumerate(exp.variants[:2], 1):
        m = v.config.model
        out[k] = dict(hidden_dims=m.hidden_dims, recurrent_length=m.recurrent_length,
                      out_hidden_dims=m.out_hidden_dims, out_recurrent_length=m.out_recurrent_length)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_flops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """FLOP/s of a large square matmul: what this device reaches at best, measured."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, 3 if quick else 5)


def step_flops(model, x, paths, device, from_one_image: bool = False) -> float:
    """FLOPs of a training step (forward and backward) on the batch x; `from_one_image`:
    counted on its first image and scaled to the batch (exact for the plain models, which
    are linear in it, and what their step at batch 100 costs on a CPU: seconds)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, fast.eager_only(model):
        with fast.autocast(paths, device):
            loss = -model.log_prob(x[:1] if from_one_image else x).float().mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) * (len(x) if from_one_image else 1)


def fresh_peak(device: torch.device) -> None:
    """Free what the last timed version left and restart the CUDA peak-memory count."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Trainable:
    """One model on one path: `impl` plain (the reference: fp32, eager), or fast / triton
    with the fast paths `compile_` and `graphs` ask for. A model without the Diagonal
    BiLSTM's scan runs triton as fast."""

    def __init__(self, case: Case, hp: dict, device, impl: str, compile_: str = "off", graphs: str = "auto"):
        shape, levels = IMAGES[case.image]
        torch.manual_seed(0)
        self.model = build_model(case.model, image_shape=shape, levels=levels, **hp).to(device)
        self.impl = "fast" if impl == "triton" and not self.model.diagonal_scan else impl
        set_impl(self.model, self.impl)
        self.paths = fast.PLAIN if self.impl == "plain" else fast.resolve(case.precision, compile_, "auto", device,
                                                                          graphs)
        self.net = fast.apply(self.model, self.model, self.paths)
        self.grad_step = fast.GradStep(self.net, self.model, self.paths, device)
        self.nats = fast.EvalStep(self.model, self.paths, device)
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=1e-4)
        self.x = torch.randint(0, levels, (case.batch, *shape), device=device)
        self.device = device
        self.scale = 1 / (case.batch * math.prod(shape) * math.log(2))

    def train_step(self) -> None:
        """What the trainer does per batch: forward + backward (`fast.GradStep`), the
        gradient norm and the batch's loss read back, the optimizer step."""
        nats = self.grad_step(self.x, None, self.scale)
        float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf")))
        nats.sum().item()
        self.opt.step()

    def eval_step(self) -> None:
        """What the trainer's evaluation does per batch (`fast.EvalStep`)."""
        self.nats(self.x, None).sum().item()


def naive_sample_rate(model, n: int, device, rows: int | None) -> float:
    """Images/s of the reference sampler (`naive_sample`); with `rows`, timed on that many
    rows and scaled."""
    C, H, W = model.image_shape
    total = len(model.generation_order())  # subpixels
    steps = total if rows is None else min(total, rows * W * C)
    model.eval()
    with torch.no_grad():
        model.logits(torch.zeros(n, C, H, W, dtype=torch.long, device=device))  # warm-up
    sync(device)
    t = time.perf_counter()
    model.naive_sample(n, torch.Generator(device=device).manual_seed(0), device, steps=steps)
    sync(device)
    seconds = (time.perf_counter() - t) * total / steps
    return n / seconds


def fast_sample_rate(model, n: int, device, graphs: bool) -> tuple[float, float]:
    """(images/s of the fast sampler, seconds of its first call). On a GPU: the best of
    two calls after that first one (with `graphs` the first call captures the CUDA graph
    that the others replay: `fast.sample` with one `fast.SamplerGraphs`). On a CPU
    nothing is warmed up or captured, and the first call is the timing."""
    kept = fast.SamplerGraphs() if graphs else None

    def run():
        g = torch.Generator(device=device).manual_seed(0)
        sync(device)
        t = time.perf_counter()
        fast.sample(model, n, generator=g, device=device, graphs=kept)
        sync(device)
        return time.perf_counter() - t
    first = run()
    return (n / min(run(), run()) if device.type == "cuda" else n / first), first


def bench_case(case: Case, hp: dict, device, quick: bool, peaks: dict, compile_: str,
               sample: bool = True, sample_n: int | None = None, graphs: str = "auto", impl: str = "fast") -> dict:
    reps = 3 if quick else 5
    row: dict = {"model": case.model, "setting": case.setting, "image": case.image, "batch": case.batch,
                 "precision": case.precision}
    fresh_peak(device)
    fast_t = Trainable(case, hp, device, impl, compile_, graphs)
    row["parameters"] = sum(p.numel() for p in fast_t.model.parameters())
    warm = 3 if fast_t.paths.compile or fast_t.paths.graphs else 1  # compiling / capturing: first calls
    row["train_ips"] = case.batch / timed(fast_t.train_step, device, reps, warm)
    failed = fast_t.paths.graphs and fast_t.grad_step.graph is None
    row["fast_paths"] = ((f"impl={fast_t.impl}, " if fast_t.impl != "fast" else "") + fast_t.paths.describe()
                         + (" (graph capture failed)" if failed else ""))
    row["eval_ips"] = case.batch / timed(fast_t.eval_step, device, reps, warm)
    row["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    peak = peaks.get("bf16" if fast_t.paths.bf16 else "fp32", peaks["fp32"])
    flops = step_flops(fast_t.model, fast_t.x, fast_t.paths, device)
    row["train_tflops"] = flops * row["train_ips"] / case.batch / 1e12
    row["pct_of_peak"] = 100 * row["train_tflops"] * 1e12 / peak
    if case.precision == "fp32" and sample:  # fp32, once per model (it does not depend on the batch)
        n = sample_n or (100 if device.type == "cuda" else (8 if quick else 16))
        model = fast_t.model
        model.eval()
        row["sample_n"] = n
        row["sample_ips"], row["sample_first_call_s"] = fast_sample_rate(model, n, device, fast_t.paths.graphs)
        rows = None if device.type == "cuda" and not quick else 1
        row["naive_sample_ips"] = naive_sample_rate(model, n, device, rows)
        row["naive_sample_scaled_from_rows"] = rows or "all"
        row["sample_ratio"] = row["sample_ips"] / row["naive_sample_ips"]
        del model
    del fast_t  # and its CUDA graphs' memory, before the plain version's peak is measured
    fresh_peak(device)
    plain = Trainable(case, hp, device, "plain")
    row["plain_train_ips"] = case.batch / timed(plain.train_step, device, max(2, reps - 1))
    row["plain_eval_ips"] = case.batch / timed(plain.eval_step, device, max(2, reps - 1))
    row["train_ratio"] = row["train_ips"] / row["plain_train_ips"]
    row["eval_ratio"] = row["eval_ips"] / row["plain_eval_ips"]
    if device.type == "cuda":  # a CPU's peak resident memory only grows through the run: no per-case figure
        row["plain_peak_memory_mb"] = round(peak_memory_mb(device), 1)
        row["memory_ratio"] = row["peak_memory_mb"] / row["plain_peak_memory_mb"]
    row["plain_train_tflops"] = step_flops(plain.model, plain.x, plain.paths, device, from_one_image=True) \
        * row["plain_train_ips"] / case.batch / 1e12
    row["tflops_ratio"] = row["train_tflops"] / row["plain_train_tflops"]
    del plain
    log.info(f"  {case.model:<16} [{case.setting}] {case.image:<10} b{case.batch:<5} {case.precision}: "
         f"train {row['train_ips']:9.1f} img/s ({row['train_ratio']:.2f}x plain), "
         f"eval {row['eval_ips']:9.1f} ({row['eval_ratio']:.2f}x)"
         + (f", sample {row['sample_ips']:.1f} ({row['sample_ratio']:.1f}x naive)" if "sample_ips" in row else ""))
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu {platform.processor() or platform.machine()}"


def run_bench(quick: bool = False, device: str = "auto", out: str | Path = "reports/bench",
              models: tuple[str, ...] = MODELS, compile_: str = "auto", command: str | None = None,
              batches: tuple[int, ...] | None = None, precisions: tuple[str, ...] | None = None,
              images: tuple[str, ...] | None = None, sets: tuple[int, ...] | None = None,
              sample_n: int | None = None, graphs: str = "auto", sample: bool = True, impl: str = "fast") -> dict:
    """Each of batches/precisions/images/sets, when given, replaces the default list."""
    from pixelexp.engine.build import pick_device
    dev = pick_device(device)
    gpu = dev.type == "cuda"
    hp = settings()
    sets = sets or ((1,) if quick else (1, 2))
    if impl == "triton":
        from pixelexp.nn.kernels.triton_scan import unavailable
        why = next(filter(None, (unavailable(hp[s]["hidden_dims"], dev) for s in sets)), None)
        if why:
            raise UserError(f"bench --impl triton: {why}; run it on a CUDA device with Triton, or leave out --impl")
    default_batches = (16, 256, 1024) if gpu else (16, 100)
    batches = batches or (default_batches[:1] if quick and gpu else default_batches)
    precisions = precisions or (("fp32",) if quick else ("fp32", "bf16"))
    images = images or (("28x28 gray",) if quick else tuple(IMAGES))
    t0 = time.perf_counter()
    peaks = {"fp32": peak_flops(dev, torch.float32, quick)}
    if "bf16" in precisions:
        peaks["bf16"] = peak_flops(dev, torch.bfloat16, quick)
    log.info(f"bench on {device_name(dev)} ({dev}), torch {torch.__version__}; measured matmul peak "
         f"{peaks['fp32'] / 1e12:.2f} TFLOP/s fp32" + (f", {peaks['bf16'] / 1e12:.2f} bf16" if "bf16" in peaks else ""))
    rows = []
    result = {"device": device_name(dev), "device_type": dev.type, "torch": str(torch.__version__),
              "python": platform.python_version(), "command": command or " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "threads": torch.get_num_threads(),
              "settings": hp, "peak_tflops": {k: v / 1e12 for k, v in peaks.items()}, "seconds": 0.0, "results": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^a-z0-9]+", "-", result["device"].lower()).strip("-") or dev.type
    for image in images:
        for s in sets:
            for name in models:
                for b in batches:
                    for p in precisions:
                        rows.append(bench_case(Case(name, s, image, b, p), hp[s], dev, quick, peaks, compile_,
                                               sample=sample and b == batches[0], sample_n=sample_n,
                                               graphs=graphs, impl=impl))
                        result["seconds"] = round(time.perf_counter() - t0, 1)
                        write(result, out / stem)  # after every case: a cut-short run keeps what it measured
    log.info(f"bench: {len(rows)} cases in {result['seconds']:.0f} s -> {out / stem}.json, {out / stem}.md")
    return result


def write(result: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))


_VAL = DataConfig().resolved_val_size(60_000)
EPOCH = (60_000 - _VAL, _VAL + 10_000)  # MNIST with the default data.val_size: images trained, then evaluated


def epoch_seconds(x: dict) -> float:
    """An MNIST epoch at a case's rates: its training images, then evaluating val and test."""
    return EPOCH[0] / x["train_ips"] + EPOCH[1] / x["eval_ips"]


def epoch_lines(results: list[dict]) -> list[str]:
    """pixel_rnn's time per MNIST epoch against pixel_cnn's, where a run timed both alike on
    MNIST's images (28x28 gray)."""
    same = lambda x: (x["setting"], x["image"], x["batch"], x["precision"])
    cnn = {same(x): x for x in results if x["model"] == "pixel_cnn"}
    out = [f"- [{x['setting']}] {x['image']} b{x['batch']} {x['precision']}: pixel_rnn "
           f"{epoch_seconds(x):.1f} s, pixel_cnn {epoch_seconds(cnn[same(x)]):.1f} s "
           f"({epoch_seconds(x) / epoch_seconds(cnn[same(x)]):.1f}x)"
           for x in results if x["model"] == "pixel_rnn" and same(x) in cnn and x["image"] == "28x28 gray"]
    if not out:
        return []
    return ["", f"Time per MNIST epoch at these rates ({EPOCH[0]:,} training images, then {EPOCH[1]:,} "
            "evaluated), fast paths:", *out]


def markdown(r: dict) -> str:
    lines = [f"# pixelexp bench: {r['device']}", "",
             f"- command: `{r['command']}`", f"- torch {r['torch']}, Python {r['python']}, "
             f"{r['threads']} threads, {r['date']}",
             "- settings: " + "; ".join(f"[{k}] {v}" for k, v in r["settings"].items()),
             "- device peak (measured matmul): " + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in
                                                               r["peak_tflops"].items()),
             "- fast = the model's fast paths (listed); plain = model.impl=plain, fp32, eager. Medians of "
             "repeats after warm-up, device-synchronized.", "",
             "| model | set | image | batch | prec | fast paths | train img/s | plain | x | eval img/s | plain | x "
             "| sample img/s | naive | x | peak MB | plain | x | TFLOP/s | plain | % peak |",
             "|" + "---|" * 21]
    for x in r["results"]:
        s = (f"{x['sample_ips']:.1f} | {x['naive_sample_ips']:.2f} | {x['sample_ratio']:.1f}"
             if "sample_ips" in x else "- | - | -")
        mem = (f"{x['plain_peak_memory_mb']:.0f} | {x['memory_ratio']:.2f}" if "memory_ratio" in x
               else "- | -")  # CPUs: the process's peak so far, no per-case figure
        plain_tflops = f"{x['plain_train_tflops']:.4f}" if "plain_train_tflops" in x else "-"
        lines.append(f"| {x['model']} | {x['setting']} | {x['image']} | {x['batch']} | {x['precision']} | "
                     f"{x['fast_paths']} | {x['train_ips']:.1f} | {x['plain_train_ips']:.1f} | "
                     f"{x['train_ratio']:.2f} | {x['eval_ips']:.1f} | {x['plain_eval_ips']:.1f} | "
                     f"{x['eval_ratio']:.2f} | {s} | {x['peak_memory_mb']:.0f} | {mem} | "
                     f"{x['train_tflops']:.4f} | {plain_tflops} | "
                     f"{x['pct_of_peak']:.2f} |")
    lines += ["", "Naive sampling on CPUs is timed on the first row of subpixels and scaled to the whole "
              "image (each step is a whole forward pass, so every step costs the same)."]
    lines += epoch_lines(r["results"])
    firsts = [f"{x['model']} [{x['setting']}] {x['image']} {x['sample_first_call_s']:.1f} s" for x in r["results"]
              if "sample_first_call_s" in x]
    if firsts:
        lines += ["", "First call of the fast sampler (on a GPU it captures the CUDA graph that later calls "
                  "replay): " + "; ".join(firsts) + "."]
    return "\n".join(lines) + "\n"


__all__ = ["run_bench", "MODELS", "IMAGES"]
