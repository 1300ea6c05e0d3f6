"""`pixelexp bench`: its report (JSON and markdown, ratios to the plain models, the cached
sampler against the naive one), its FLOP counts, its epoch comparison, and its stop on
a signal."""

import pytest
import torch

from pixelexp.models import build_model, set_impl


def test_bench_writes_json_and_markdown_with_plain_ratios(tmp_path, capsys):
    import json

    from pixelexp.cli import main
    assert main(["bench", "--quick", "--models", "pixel_cnn", "--out", str(tmp_path)]) == 0
    (js,) = tmp_path.glob("*.json")
    md = js.with_suffix(".md")
    r = json.loads(js.read_text())
    assert r["torch"] == torch.__version__ and r["command"].startswith("python -m pixelexp bench --quick")
    assert [(x["model"], x["batch"]) for x in r["results"]] == [("pixel_cnn", 16), ("pixel_cnn", 100)]
    first = r["results"][0]
    for k in ("train_ips", "plain_train_ips", "eval_ips", "plain_eval_ips", "sample_ips", "naive_sample_ips",
              "peak_memory_mb", "train_tflops", "pct_of_peak", "plain_train_tflops"):
        assert first[k] > 0, k
    assert first["train_ratio"] == pytest.approx(first["train_ips"] / first["plain_train_ips"])
    assert first["tflops_ratio"] == pytest.approx(first["train_tflops"] / first["plain_train_tflops"])
    assert "memory_ratio" not in first  # a CPU has no per-case peak memory
    assert first["sample_ips"] > first["naive_sample_ips"]  # the cached sampler against the naive one
    assert "| pixel_cnn | 1 | 28x28 gray | 16 | fp32 |" in md.read_text()
    assert main(["bench", "--models", "pixel_cnnn"]) == 2
    assert "not a model" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["pixel_rnn", "row_lstm", "gated_pixel_cnn"])
def test_bench_flops_of_one_image_scale_to_the_batch(name):
    """bench counts the plain models' FLOPs on one image and scales: they are linear in the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from pixelexp.engine.fast import PLAIN
    from pixelexp.tools.bench import step_flops
    torch.manual_seed(0)
    model = set_impl(build_model(name, image_shape=(1, 6, 5), levels=2, hidden_dims=4, recurrent_length=2), "plain")
    x = torch.randint(0, 2, (3, 1, 6, 5))
    with FlopCounterMode(display=False) as counter:
        (-model.log_prob(x).mean()).backward()
    assert step_flops(model, x, PLAIN, torch.device("cpu"), from_one_image=True) == counter.get_total_flops() > 0


def test_bench_compares_time_per_epoch_of_cases_timed_alike():
    from pixelexp.tools.bench import epoch_lines
    case = {"setting": 1, "image": "28x28 gray", "precision": "fp32"}
    results = [{**case, "model": "pixel_cnn", "batch": 256, "train_ips": 55_000.0, "eval_ips": 15_000.0},  # 2 s
               {**case, "model": "pixel_rnn", "batch": 256, "train_ips": 5_500.0, "eval_ips": 7_500.0},  # 12 s
               {**case, "model": "pixel_rnn", "batch": 16, "train_ips": 1.0, "eval_ips": 1.0}]  # no pixel_cnn b16
    lines = epoch_lines(results)
    assert lines[-1] == "- [1] 28x28 gray b256 fp32: pixel_rnn 12.0 s, pixel_cnn 2.0 s (6.0x)"
    assert len([x for x in lines if x.startswith("- ")]) == 1
    assert epoch_lines(results[1:]) == []


def test_bench_stops_at_the_first_sigterm(tmp_path):
    """Only training commands finish their batch on a signal; bench stops at once (a
    `timeout` around it must be able to end it)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    proc = subprocess.Popen([sys.executable, "-m", "pixelexp", "bench", "--quick", "--models", "pixel_rnn",
                             "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert "bench on" in proc.stdout.readline()  # timing has begun
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    t = time.monotonic()
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert time.monotonic() - t < 10

