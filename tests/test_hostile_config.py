"""Hostile config files and settings: every one is a one-line error (exit code 2) that
names the file, the line or the key and the fix, found while loading the config,
before anything is written.

Each case is refused in config loading. Where a loader that missed the case would go
on to load data and train, the test also passes GUARD (or a sweep's SWEEP_GUARD): a
setting refused later in loading than the case under test, so such a loader stops in
config loading too, with another message, and the test fails on its words.
"""

import time
from pathlib import Path

import pytest

from pixelexp.cli import main
from pixelexp.errors import ConfigError
from pixelexp.studies.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
RNN_VS_CNN = REPO / "experiments" / "rnn_vs_cnn.yaml"
GUARD = "train.epochs=0"  # refused after the file's names and values (see the module's docstring)
SWEEP_GUARD = "heartbeat: 0\n"  # refused after every other key of a sweep file
SPACE = "space: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-3}}\n"
LONG = 500  # the longest useful line: a file path, an unknown train key and train's 17 known keys
SHORT = 300  # a line that quotes a user's value, however long the value


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run three folders down in tmp_path, with the MLflow store there, and check that a refused
    config wrote nothing: no store, no folder, nothing anywhere in tmp_path (where a name with
    '..' would land: reports/../../../outside is two folders up) but the test's own YAML files."""
    work = tmp_path / "w1" / "w2" / "w3"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    yield
    folders = {tmp_path / "w1", tmp_path / "w1" / "w2", work}
    own = {p for p in tmp_path.glob("*.yaml")}
    written = [p for p in tmp_path.rglob("*") if p not in folders | own]
    assert written == []


def fail(capsys, argv) -> str:
    """Run the CLI, expect exit 2 and exactly one short line on stderr; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[:2000]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[:2000]
    assert len(lines[0]) < LONG, lines[0][:2000]
    return lines[0]


def experiment(tmp_path, text: str, name: str = "x.yaml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def sweep(tmp_path, text: str, name: str = "s.yaml") -> Path:
    f = tmp_path / name
    f.write_text(f"experiment: {RNN_VS_CNN}\n{text}")
    return f


# ---------------------------------------------------------------- YAML itself

def test_an_alias_bomb_is_refused_at_its_first_anchor(capsys, tmp_path):
    rows = ["bomb0: &a0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"bomb{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    f = experiment(tmp_path, "\n".join(rows) + "\nbase: {train: {lr: *a9}}\n")
    assert f.stat().st_size < 1000  # 9**9 values once expanded
    start = time.monotonic()
    line = fail(capsys, ["experiment", str(f)])
    assert time.monotonic() - start < 2
    assert str(f) in line and "line 1" in line and "anchors and aliases" in line and "write the values out" in line


@pytest.mark.parametrize("text,at,key", [
    ("base:\n  train:\n    lr: 0.1\n    epochs: 1\n    lr: 0.2\n", "line 5", "'lr'"),
    ("base: {}\nvariants:\n  - name: a\n    model: {hidden_dims: 4, hidden_dims: 8}\n", "line 4", "'hidden_dims'"),
    ("base: {}\nbase: {train: {lr: 0.1}}\n", "line 2", "'base'"),
])
def test_a_key_given_twice_in_one_mapping_is_refused(capsys, tmp_path, text, at, key):
    f = experiment(tmp_path, text)
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert str(f) in line and at in line and f"key {key} appears twice in one mapping" in line and "keep one" in line


@pytest.mark.parametrize("text", [
    "base:\n  train:\n    <<: {lr: 0.1}\n    lr: 0.2\n",  # a merge would hide a second lr
    "base:\n  train: {<<: {lr: 0.1, lr: 0.2}}\n",
])
def test_merge_keys_are_refused(capsys, tmp_path, text):
    f = experiment(tmp_path, text)
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert str(f) in line and "merge keys (<<) are not allowed" in line


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(capsys, tmp_path):
    f = experiment(tmp_path, "# padding\n" * 30_000 + "base: {train: {epochs: 0}}\n")
    line = fail(capsys, ["experiment", str(f)])
    assert str(f) in line and "is 293 KiB" in line and "experiment files are at most 256 KiB" in line


def test_nesting_a_thousand_levels_deep_is_refused(capsys, tmp_path):
    f = experiment(tmp_path, "base: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n")
    line = fail(capsys, ["experiment", str(f)])
    assert str(f) in line and "nested more than 32 levels deep" in line


@pytest.mark.parametrize("data,words", [
    (b"base: {train: {lr: 0.1}}\ndescription: caf\xe9\n", ["not UTF-8", "0xe9", "save it as UTF-8"]),
    (b"base: {train: {lr: 0.1}}\ndescription: bell\x07\n", ["not valid YAML", "#x0007"]),
])
def test_bytes_that_are_not_yaml_text_are_one_line(capsys, tmp_path, data, words):
    f = tmp_path / "x.yaml"
    f.write_bytes(data)
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert str(f) in line and all(w in line for w in words), line


# ---------------------------------------------------------------- long values stay readable

MEGA = "x" * 2**20


@pytest.mark.parametrize("override,words", [
    (f"train.optimizer={MEGA}", ["train.optimizer='xxx", "...", "rmsprop, adam"]),
    (f"train.lr={MEGA}", ["train.lr='xxx", "...", "not a number"]),
    (f"train.{MEGA}=1", ["unknown key 'train.xxx", "...", "train.lr"]),
    (f"={MEGA}", ["expected KEY=VALUE", "'=xxx", "..."]),
])
def test_a_megabyte_on_the_command_line_gives_a_short_line(capsys, tmp_path, override, words):
    f = experiment(tmp_path, "base: {train: {lr: 0.1}}\n")
    line = fail(capsys, ["experiment", str(f), override])
    assert all(w in line for w in words), line
    assert "known:" in line or len(line) < SHORT, line


@pytest.mark.parametrize("text,words", [
    (f"base: {{train: {{optimizer: {'y' * 200_000}}}}}\n", ["train.optimizer='yyy", "..."]),
    (f"base:\n  train:\n    ? {'y' * 200_000}\n    : 1\n", ["unknown key 'train.yyy", "..."]),
    (f"? {'y' * 200_000}\n: 1\n", ["unknown top-level key 'yyy", "..."]),
])
def test_a_long_value_in_a_file_gives_a_short_line(capsys, tmp_path, text, words):
    f = experiment(tmp_path, text)
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert str(f) in line and all(w in line for w in words), line
    assert "known:" in line or len(line) < SHORT, line


@pytest.mark.parametrize("text,words", [
    (f"variant: {'v' * 200_000}\n{SPACE}", ["variant='vvv", "...", "pixel_cnn-1"]),
    (f"metric: {'m' * 200_000}\n{SPACE}", ["metric='mmm", "...", "val_bpd"]),
    (f"space: {{train.optimizer: {{type: categorical, choices: [{'o' * 200_000}]}}}}\n",
     ["train.optimizer='ooo", "...", "rmsprop, adam"]),
])
def test_a_long_value_in_a_sweep_file_gives_a_short_line(capsys, tmp_path, text, words):
    f = sweep(tmp_path, text + SWEEP_GUARD)
    line = fail(capsys, ["sweep", str(f)])
    assert str(f) in line and all(w in line for w in words) and len(line) < SHORT, line


# ---------------------------------------------------------------- NaN and inf

@pytest.mark.parametrize("override,shown", [
    ("train.lr=nan", "train.lr=nan"),
    ("train.lr=1e999", "train.lr=inf"),
    ("train.lr_decay=inf", "train.lr_decay=inf"),
    ("train.grad_clip=nan", "train.grad_clip=nan"),
    ("train.grad_clip=-inf", "train.grad_clip=-inf"),
    ("train.checkpoint_minutes=inf", "train.checkpoint_minutes=inf"),
])
def test_nan_and_inf_on_the_command_line_are_refused(capsys, override, shown):
    line = fail(capsys, ["train", override, GUARD])
    assert line == f"error: command line: {shown} is not a finite number; give a finite value"


@pytest.mark.parametrize("text,shown", [
    ("train: {lr: .nan}", "train.lr=nan"),
    ("train: {grad_clip: .inf}", "train.grad_clip=inf"),
    ("train: {checkpoint_minutes: .NaN}", "train.checkpoint_minutes=nan"),
    ("train: {lr_decay: " + "9" * 400 + "}", "train.lr_decay=999"),
])
def test_nan_and_inf_in_a_file_are_refused(capsys, tmp_path, text, shown):
    f = experiment(tmp_path, text + "\n", "run.yaml")
    line = fail(capsys, ["train", str(f), GUARD])
    assert str(f) in line and shown in line and "not a finite number" in line, line


def test_the_seed_fits_numpy(capsys):
    line = fail(capsys, ["train", f"train.seed={2**32}", GUARD])
    assert "train.seed=4294967296" in line and "<= 4294967295" in line


# ---------------------------------------------------------------- names become folders and files

@pytest.mark.parametrize("text,words", [
    ("name: ../../../outside\nbase: {}\n", ["experiment name '../../../outside'"]),
    ('name: "a\\nb"\nbase: {}\n', ["experiment name 'a\\nb'"]),
    ("base: {}\nvariants:\n  - name: cnn/../../../escape\n", ["variant #1's name 'cnn/../../../escape'"]),
    ("base: {}\nvariants:\n  - name: ok\n  - name: two words\n", ["variant #2's name 'two words'"]),
    ("base: {}\nvariants:\n  - name: .hidden\n", ["variant #1's name '.hidden'"]),
    ("base: {}\nvariants:\n  - name: a..b\n", ["variant #1's name 'a..b'"]),
    ("base: {}\nvariants:\n  - name: " + "n" * 101 + "\n", ["variant #1's name 'nnn"]),
])
def test_unsafe_names_are_refused_before_anything_is_written(capsys, tmp_path, text, words):
    f = experiment(tmp_path, text)
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert str(f) in line and all(w in line for w in words), line
    assert "is not a safe name" in line and "[A-Za-z0-9][A-Za-z0-9_.-]{0,99}" in line and "no '..'" in line


@pytest.mark.parametrize("stem", ["my experiment", "bad\nname", "a..b"])
def test_an_unsafe_file_name_is_refused_as_the_experiments_name(capsys, tmp_path, stem):
    f = experiment(tmp_path, "base: {}\n", f"{stem}.yaml")
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert f"experiment name {stem!r} is not a safe name" in line, line


@pytest.mark.parametrize("stem", ["my sweep", "a..b"])
def test_an_unsafe_sweep_file_name_is_refused(capsys, tmp_path, stem):
    f = sweep(tmp_path, SPACE + SWEEP_GUARD, f"{stem}.yaml")
    line = fail(capsys, ["sweep", str(f)])
    assert f"sweep name (the file's name) {stem!r} is not a safe name" in line, line


def test_an_empty_list_of_variants_is_refused(capsys, tmp_path):
    f = experiment(tmp_path, "base: {train: {lr: 0.1}}\nvariants: []\n")
    line = fail(capsys, ["experiment", str(f), GUARD])
    assert str(f) in line and "'variants' is an empty list" in line and "give at least one variant" in line
    assert "leave 'variants' out" in line


# ---------------------------------------------------------------- sweep spaces

@pytest.mark.parametrize("space,words", [
    ("model.hidden_dims: {type: int, low: 4, high: 12, step: 0}", ["model.hidden_dims", "step=0", "> 0"]),
    ("train.lr: {type: float, low: 0.1, high: 0.5, step: -0.1}", ["train.lr", "step=-0.1", "> 0"]),
    ("model.hidden_dims: {type: int, low: 4, high: 12, step: 0.5}", ["model.hidden_dims", "integers"]),
    ("train.lr: {type: float, low: 1.0e-4, high: 1.0e-3, step: 1.0e-4, log: true}",
     ["train.lr", "log: true and step", "drop one"]),
    ("model.hidden_dims: {type: int, low: 8, high: 64, step: 8, log: true}",
     ["model.hidden_dims", "log: true and step"]),
    ("train.lr: {type: float, low: 1.0e-4, high: .inf}", ["train.lr", "high=inf", "not a finite number"]),
    ("train.lr: {type: float, low: .nan, high: 0.1}", ["train.lr", "low=nan", "not a finite number"]),
    ("train.lr: {type: float, low: -.inf, high: 0.1}", ["train.lr", "low=-inf", "not a finite number"]),
    ("train.lr: {type: float, low: 0.1, high: 0.5, step: .nan}", ["train.lr", "step=nan", "not a finite number"]),
    ("model.hidden_dims: {type: int, low: 4, high: .inf}", ["model.hidden_dims", "high=inf", "not a finite number"]),
    ("model.hidden_dims: {type: int, low: 4, high: .nan}", ["model.hidden_dims", "high=nan", "not a finite number"]),
    ("train.lr: {type: float, low: 0.1, high: 0.5, log: maybe}", ["train.lr", "log='maybe'", "true or false"]),
    ("model.hidden_dims: {type: int, low: 4, high: 8, 1: a, b: c}", ["model.hidden_dims", "takes no 1"]),
    ("1: {type: int, low: 4, high: 8}", ["unknown key 1"]),
])
def test_bad_search_spaces_are_refused_by_load_sweep(capsys, tmp_path, space, words):
    f = sweep(tmp_path, f"space:\n  {space}\n{SWEEP_GUARD}")
    line = fail(capsys, ["sweep", str(f)])
    assert str(f) in line and all(w in line for w in words), line


@pytest.mark.parametrize("text,words", [
    ("timeout: .nan\n", ["timeout=nan", "finite number of seconds"]),
    ("timeout: .inf\n", ["timeout=inf", "finite number of seconds"]),
    ("sampler: {type: tpe, seed: 4294967296}\n", ["seed=4294967296", "<= 4294967295"]),
    ("sampler: {type: grid}\n", ["sampler grid needs a step", "space.train.lr"]),
    ("storage: 5\n", ["storage=5", "a URL"]),
])
def test_bad_sweep_settings_are_refused_by_load_sweep(capsys, tmp_path, text, words):
    f = sweep(tmp_path, SPACE + text + SWEEP_GUARD)
    line = fail(capsys, ["sweep", str(f)])
    assert str(f) in line and all(w in line for w in words), line


def test_a_grid_of_billions_of_points_is_refused(capsys, tmp_path):
    space = "space: {train.lr: {type: float, low: 1.0e-6, high: 1.0, step: 1.0e-12}}\n"
    f = sweep(tmp_path, space + "sampler: {type: grid}\n" + SWEEP_GUARD)
    line = fail(capsys, ["sweep", str(f)])
    assert "sampler grid would hold over 1,000,000 points" in line and "larger steps" in line


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_heartbeat_that_is_not_finite_is_refused(tmp_path, value):
    f = sweep(tmp_path, f"{SPACE}heartbeat: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    assert "\n" not in str(e.value) and f"heartbeat={value[1:]}" in str(e.value) and "finite" in str(e.value)


@pytest.mark.parametrize("metric", ["test_bpd", "test_nats", "best_test_bpd"])
def test_a_test_metric_is_never_a_sweep_objective(capsys, tmp_path, metric):
    f = tmp_path / "peek.yaml"
    f.write_text(f"experiment: {RNN_VS_CNN}\n{SPACE}metric: {metric}\n")
    line = fail(capsys, ["sweep", str(f)])
    assert f"metric={metric} is a test metric" in line and "chosen on validation" in line
