"""Experiment and config files: YAML read strictly (no anchors or aliases, no key twice,
size and depth bounded), then checked key by key into `Config`s.

An experiment file is a `base` of settings and the `variants` that differ from it (each
with a `name`, the keys it changes and optionally the paper's `published` numbers);
`name` defaults to the file's name:

    description: PixelRNN (Diagonal BiLSTM) vs PixelCNN on binarized MNIST
    base:
      data: {name: mnist, levels: 2, binarize: fixed}
      train: {epochs: 50, batch_size: 100, optimizer: rmsprop, lr: 1.0e-3}
    variants:
      - name: pixel_rnn-1
        model: {name: pixel_rnn, hidden_dims: 16, recurrent_length: 7}
      - name: pixel_cnn-1
        model: {name: pixel_cnn, hidden_dims: 16, recurrent_length: 7}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelexp.config.settings import (
    Config,
    check_name,
    did_you_mean,
    finite,
    flatten,
    parse_overrides,
    resolve,
    shown,
    shown_path,
)
from pixelexp.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str
    config: Config
    published: dict[str, float] = field(default_factory=dict)  # the paper's numbers, for reports


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    description: str
    variants: tuple[Variant, ...]
    slurm: Any = None  # the file's slurm: block, as written (checked by pixelexp.studies.slurm)


EXPERIMENT_KEYS = ("name", "description", "base", "variants", "slurm")


def yaml_path(name_or_path: str, folder: str) -> Path:
    """`rnn_vs_cnn` -> <folder>/rnn_vs_cnn.yaml; a path (with a folder or .yaml) stays a path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        return p
    return Path(folder) / f"{name_or_path}.yaml"


MAX_YAML_BYTES = 256 * 1024  # experiment, sweep and config files are a few KiB
MAX_YAML_DEPTH = 32  # the deepest real file nests about 6 levels


class YamlRefused(Exception):
    """What the strict loader refuses, at a line of the file (`read_yaml` names the file)."""

    def __init__(self, line: int, text: str):
        super().__init__(f"line {line}: {text}")


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors and aliases, merge keys, duplicate keys and deep nesting.

    An alias repeats a value without writing it out: a few hundred bytes of nested
    aliases expand to billions of values (an alias bomb), so the first anchor or alias
    stops the load, before anything is expanded. A key given twice in one mapping would
    silently keep the last value. Nesting is bounded so the recursive composer (and
    `flatten` after it) never hit Python's recursion limit."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            name = event.anchor[:30]
            raise YamlRefused(line, f"YAML anchors and aliases (&{name}, *{name}) are not allowed; "
                                    f"write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlRefused(line, f"nested more than {MAX_YAML_DEPTH} levels deep; settings are "
                                        f"section.key: value")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` would splice keys in unchecked
                    raise YamlRefused(line, "YAML merge keys (<<) are not allowed; write the settings out")
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)  # (1 and true are one key of a Python dict)
                if key in seen:
                    raise YamlRefused(line, f"key {shown(key)} appears twice in one mapping (also at line "
                                            f"{seen[key]}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _size(n: int) -> str:
    """A file size as a person reads it: 812 bytes, 300 KiB, 3.1 MiB."""
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _missing(p: Path, what: str) -> ConfigError:
    """No such file: list the YAML files of its folder, which hold the likely intended one."""
    folder = p.parent if str(p.parent) not in ("", ".") else Path(".")
    try:
        found = sorted(x.stem for x in folder.glob("*.yaml")) if folder.is_dir() else []
    except OSError:
        found = []
    hint = f"; available in {shown_path(folder)}/: {', '.join(found)}" if found else ""
    return ConfigError(f"{shown_path(p)}: no such {what} file{hint}")


def _read_text(p: Path, what: str) -> str:
    """The file's text, refused before reading when larger than MAX_YAML_BYTES (stat, and then
    at most that many bytes read, should it grow meanwhile) or when it is not UTF-8."""
    where = shown_path(p)
    try:
        if not p.is_file():
            raise _missing(p, what)
        size = p.stat().st_size
        limit = f"{what} files are at most {_size(MAX_YAML_BYTES)}"
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{where}: is {_size(size)}; {limit}")
        with open(p, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{where}: cannot be read ({e.strerror or type(e).__name__}); check the path") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: is over {_size(MAX_YAML_BYTES)}; {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """' at line N: problem' from a YAML error, on one line and of readable length."""
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    first = (problem.strip().splitlines() or [""])[0]
    return f"{at}: {first if len(first) <= 200 else first[:197] + '...'}"


def read_yaml(path: str | Path, what: str = "experiment") -> dict:
    """The one reader of YAML files (experiment, sweep, config): size-limited, strict
    (no anchors or aliases, no key twice), and a mapping at the top."""
    p = Path(path)
    text = _read_text(p, what)
    try:
        tree = yaml.load(text, Loader=StrictLoader)
    except YamlRefused as e:
        raise ConfigError(f"{shown_path(p)}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown_path(p)}: not valid YAML{_yaml_problem(e)}") from None
    if not isinstance(tree, dict):
        keys = f"keys {', '.join(EXPERIMENT_KEYS)}" if what == "experiment" else "settings"
        raise ConfigError(f"{shown_path(p)}: expected a mapping with {keys}, got {type(tree).__name__}")
    return tree


def load_experiment(path: str | Path, overrides: list[str] | dict | None = None) -> Experiment:
    """experiments/<name>.yaml + command-line overrides -> checked variants."""
    p = Path(path)
    at = shown_path(p)
    tree = read_yaml(p)
    for k in tree:
        if k not in EXPERIMENT_KEYS:
            raise ConfigError(f"{at}: unknown top-level key {shown(k)}{did_you_mean(k, EXPERIMENT_KEYS)}; "
                              f"allowed: {', '.join(EXPERIMENT_KEYS)}")
    name = check_name(_experiment_name(tree.get("name"), p), "experiment name", at)
    base = flatten({} if tree.get("base") is None else tree["base"], f"{at} (base)")
    cli = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    raw = _raw_variants(tree.get("variants"), at)
    variants = []
    for vname, v in zip(_variant_names(raw, at), raw):
        where = f"{at} (variant {vname})"
        own = flatten({k: x for k, x in v.items() if k not in ("name", "published")}, where)
        cfg = resolve([base, own, cli], [f"{at} (base)", where, "command line"])
        variants.append(Variant(vname, cfg, _published(v.get("published"), where)))
    return Experiment(name, p, str(tree.get("description") or ""), tuple(variants), tree.get("slurm"))


def _variant_names(raw: list, at: str) -> list[str]:
    """Every variant's name, all checked before any variant's settings: each a safe name, none twice."""
    names: list[str] = []
    for i, v in enumerate(raw):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
            raise ConfigError(f"{at}: variant #{i + 1} needs a 'name' (a string) beside its settings")
        name = check_name(v["name"], f"variant #{i + 1}'s name", at)
        if name in names:
            raise ConfigError(f"{at}: variant name {name!r} appears twice; names must be unique")
        names.append(name)
    return names


def _experiment_name(given: Any, p: Path) -> Any:
    """The file's `name:`, else its stem; a number is taken as its digits (`name: 2024`)."""
    if given is None or given == "":
        return p.stem
    return str(given) if isinstance(given, int) and not isinstance(given, bool) else given


def _raw_variants(tree: Any, at: str) -> list:
    """`variants:` as given, or one `default` variant when the key is left out. An empty list
    is refused: it reads as "no runs", not as "one run of the base"."""
    if tree is None:
        return [{"name": "default"}]
    if not isinstance(tree, list):
        raise ConfigError(f"{at}: 'variants' must be a list of mappings, each with a 'name'")
    if not tree:
        raise ConfigError(f"{at}: 'variants' is an empty list; give at least one variant (- name: ...), "
                          f"or leave 'variants' out for a single run of the base")
    return tree


PUBLISHED_METRICS = ("test_bpd", "test_nats")


def _published(tree: Any, where: str) -> dict[str, float]:
    """`published: {test_nats: 79.20}`: a paper's result to show beside ours."""
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: 'published' must map metrics ({', '.join(PUBLISHED_METRICS)}) to numbers")
    out = {}
    for k, v in tree.items():
        if k not in PUBLISHED_METRICS:
            raise ConfigError(f"{where}: published metric {shown(k)} is unknown; use {', '.join(PUBLISHED_METRICS)}")
        bad = lambda what, k=k, v=v: ConfigError(f"{where}: published {k}={shown(v)} is {what}")
        if isinstance(v, str):
            raise bad("not a number")
        out[k] = finite(f"published {k}", v, where, bad)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """A single run's config: an optional YAML file of sections, then overrides."""
    layers, wheres = [], []
    if path is not None:
        tree = read_yaml(path, "config")
        at = shown_path(path)
        if "base" in tree or "variants" in tree:
            raise ConfigError(f"{at}: is an experiment file (it has base/variants); "
                              f"run it with `python -m pixelexp experiment {at}`")
        layers.append(flatten(tree, at))
        wheres.append(at)
    cli = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    layers.append(cli)
    wheres.append("command line")
    return resolve(layers, wheres)


def config_from_dict(tree: dict, where: str) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. inside a checkpoint)."""
    return resolve([flatten(tree, where)], [where])
