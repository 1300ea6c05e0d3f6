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



def test_time_to_quality_records_when_each_target_is_first_reached(tmp_path, mnist10k, monkeypatch):
    """`bench --quality` on a sliver of the digits: every model's curve of test nats by
    training seconds, and for each target the first epoch at or below it."""
    import json

    from pixelexp.cli import main
    monkeypatch.setenv("PIXELEXP_DATA", str(mnist10k))
    tiny = ["data.train_limit=60", "data.val_size=10", "data.test_limit=30", "model.hidden_dims=4",
            "model.recurrent_length=1", "model.out_hidden_dims=8", "train.precision=fp32"]
    assert main(["bench", "--quality", "--device", "cpu", "--batches", "20", "--targets", "1000,0",
                 "--max-epochs", "2", "--budget", "600", "--out", str(tmp_path), *tiny]) == 0
    (js,) = tmp_path.glob("*-quality.json")
    r = json.loads(js.read_text())
    assert [x["model"] for x in r["results"]] == ["pixel_cnn", "pixel_rnn", "gated_pixel_cnn"]
    for x in r["results"]:
        assert [c["epoch"] for c in x["curve"]] == [1, 2]  # 0 nats is never reached: both epochs run
        seconds = [c["train_seconds"] for c in x["curve"]]
        assert 0 < seconds[0] < seconds[1] and x["curve"][1]["elapsed_seconds"] >= seconds[1]
        first = next(c for c in x["curve"] if c["test_nats"] <= 1000)
        assert x["reached"] == {"1000.0": {k: first[k] for k in ("epoch", "train_seconds", "elapsed_seconds")}}
        assert x["config"]["model.name"] == x["model"] and x["n_parameters"] > 0
    md = js.with_suffix(".md").read_text()
    assert "| pixel_rnn |" in md and "not reached" in md
    assert main(["bench", "--quality", "--targets", "lots"]) == 2


def test_the_readme_speed_tables_are_generated_from_reports_bench(tmp_path):
    """The README quotes reports/bench/ through scripts/speed_table.py only: a figure changed
    in a result file (or typed into the README) makes them differ."""
    import importlib.util
    import json
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("speed_table", repo / "scripts" / "speed_table.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    readme = (repo / "README.md").read_text()
    assert st.with_tables(readme, st.tables()) == readme, "run python scripts/speed_table.py"
    assert "| pixel_rnn | [1] | 28x28 gray | 256 | fp32 | 2,058 (4.3x) |" in readme
    copy = tmp_path / "bench"
    shutil.copytree(repo / "reports" / "bench", copy)
    (f := copy / "nvidia-h200.json").write_text(f.read_text().replace('"train_ips": 2058', '"train_ips": 2158', 1))
    json.loads(f.read_text())
    assert st.with_tables(readme, st.tables(copy)) != readme
