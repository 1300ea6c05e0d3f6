"""Bad input never starts a run: one line naming the file, the key and what is
allowed, exit code 2, and nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from pixelexp.cli import main
from pixelexp.config import Config, load_config, load_experiment, parse_overrides
from pixelexp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXP = str(REPO / "experiments" / "rnn_vs_cnn.yaml")


def fail(capsys, argv) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    # Bad input never reached MLflow: no store was even created.
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_key_suggests_the_closest(capsys):
    line = fail(capsys, ["experiment", EXP, "train.lrr=0.1"])
    assert "command line" in line and "'train.lrr'" in line and "did you mean 'train.lr'" in line


def test_unknown_key_in_a_file_names_the_file_and_variant(capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("base: {train: {epochs: 1}}\nvariants:\n  - name: a\n    model: {hiden_dims: 3}\n")
    line = fail(capsys, ["experiment", str(f)])
    assert str(f) in line and "variant a" in line and "'model.hiden_dims'" in line
    assert "did you mean 'model.hidden_dims'" in line


@pytest.mark.parametrize("override,words", [
    ("train.epochs=two", ["train.epochs", "not an integer"]),
    ("train.lr=fast", ["train.lr", "not a number"]),
    ("model.use_residual=maybe", ["model.use_residual", "true or false"]),
])
def test_wrong_type(capsys, override, words):
    line = fail(capsys, ["experiment", EXP, override])
    assert all(w in line for w in words), line


@pytest.mark.parametrize("override,words", [
    ("train.lr=-1", ["train.lr", "out of range", "> 0"]),
    ("train.lr=0", ["train.lr", "> 0"]),
    ("data.levels=1", ["data.levels", ">= 2"]),
    ("data.levels=300", ["data.levels", "<= 256"]),
    ("train.epochs=0", ["train.epochs", ">= 1"]),
    ("train.optimizer=sgd", ["train.optimizer", "rmsprop, adam"]),
    ("data.binarize=dyn", ["data.binarize", "did you mean 'dynamic'"]),
    ("train.device=tpu", ["train.device", "auto, cpu, cuda"]),
    ("data.binarize=none", ["data.binarize=none", "data.levels"]),
    ("data.levels=256", ["data.binarize", "none"]),
])
def test_out_of_range(capsys, override, words):
    line = fail(capsys, ["experiment", EXP, override])
    assert all(w in line for w in words), line


def test_unknown_model(capsys):
    line = fail(capsys, ["experiment", EXP, "model.name=pixel_gan"])
    assert "model.name='pixel_gan'" in line and "pixel_cnn" in line and "pixel_rnn" in line


@pytest.mark.parametrize("overrides,words", [
    (["model.name=pixel_cnn"], ["model.impl=triton", "pixel_cnn", "model.impl=fast", "pixel_rnn"]),
    (["model.name=pixel_rnn", "model.hidden_dims=12"], ["model.impl=triton", "model.hidden_dims", "power of two",
                                                        "got 12", "model.impl=fast"]),
])
def test_triton_impl_only_where_its_kernels_apply(capsys, overrides, words):
    line = fail(capsys, ["train", *overrides, "model.impl=triton"])
    assert all(w in line for w in words), line


def test_bench_triton_impl_without_its_device(capsys, monkeypatch, tmp_path):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.chdir(REPO)  # bench reads rnn_vs_cnn's settings from experiments/
    line = fail(capsys, ["bench", "--quick", "--device", "cpu", "--impl", "triton", "--out", str(tmp_path / "b")])
    assert "bench --impl triton" in line and "not CUDA" in line and "leave out --impl" in line, line
    assert not (tmp_path / "b").exists()


def test_unknown_dataset(capsys):
    line = fail(capsys, ["experiment", EXP, "data.name=mnsit"])
    assert "data.name='mnsit'" in line and "did you mean 'mnist'" in line


def test_missing_experiment_file_lists_the_available_ones(capsys):
    line = fail(capsys, ["experiment", str(REPO / "experiments" / "rnn_vs_cnm.yaml")])
    assert "rnn_vs_cnm.yaml" in line and "no such experiment file" in line and "rnn_vs_cnn" in line


def test_bad_override_syntax(capsys):
    line = fail(capsys, ["experiment", EXP, "train.lr"])
    assert "KEY=VALUE" in line


def test_invalid_yaml(capsys, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("base: {train: [\n")
    line = fail(capsys, ["experiment", str(f)])
    assert str(f) in line and "not valid YAML" in line


def test_unknown_top_level_key(capsys, tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("bases: {}\n")
    line = fail(capsys, ["experiment", str(f)])
    assert "'bases'" in line and "did you mean 'base'" in line


def test_unknown_command_and_bad_flag(capsys):
    assert "invalid choice" in fail(capsys, ["trian"])
    assert "--n" in fail(capsys, ["sample", "abc", "--n", "many"])


def test_a_real_process_exits_2_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pixelexp", "experiment", EXP, "train.batch_size=-3"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "train.batch_size=-3" in p.stderr


# ---------------------------------------------------------------- the happy path

def test_layers_override_in_order():
    exp = load_experiment(EXP, ["train.epochs=2", "model.hidden_dims=8"])
    names = [v.name for v in exp.variants]
    assert names == ["pixel_rnn-1", "pixel_rnn-2", "pixel_cnn-1", "pixel_cnn-2"]
    rnn1 = exp.variants[0].config
    assert rnn1.model.name == "pixel_rnn" and rnn1.model.recurrent_length == 7
    assert rnn1.model.hidden_dims == 8  # the command line wins over the variant
    assert rnn1.train.epochs == 2 and rnn1.train.lr == 1e-3 and rnn1.train.optimizer == "rmsprop"
    assert exp.variants[3].config.model.out_hidden_dims == 64


def test_values_are_converted_to_the_declared_types():
    cfg = load_config(None, ["train.lr=3e-4", "model.use_residual=false", "data.train_limit=null"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.use_residual is False and cfg.data.train_limit is None


def test_config_is_frozen_and_round_trips():
    cfg = load_config(None, ["train.epochs=3"])
    with pytest.raises(Exception):
        cfg.train.epochs = 4  # type: ignore[misc]
    assert cfg.replace(**{"train.epochs": 5}).train.epochs == 5
    assert Config() == load_config(None, [])


def test_parse_overrides_rejects_a_missing_key():
    with pytest.raises(ConfigError):
        parse_overrides(["=3"])
