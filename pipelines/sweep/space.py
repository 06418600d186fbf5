"""The search space of a sweep: a YAML file of config paths mapped to distributions.

    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    model.d_model: {choice: [32, 64, 128]}
    labels.pivot_bars: {grid: [2, 3, 5]}
    train.batch_size: {randint: [32, 257]}      # upper bound excluded

Everything is checked here, against the config schema and the config's own validation, before
Ray or MLflow is touched: a space that cannot run is refused with nothing started or written.

Keys that shape the dataset (``data.*``, ``labels.*``, ``features.*``, ``train.holdout_fraction``)
take ``choice`` or ``grid`` only: each of their values' datasets is built once, before the
trials, and shared by reference (a continuous range would need one dataset per trial).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conf import Config, config_from_dict, to_dict
from conf.loader import _apply_override, _coerce
from pipelines.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
# the sections a trial's training reads; the rest (ray, tracking, serve, ...) belong to the sweep
SWEEPABLE = ("data", "labels", "features", "model", "train")
DATASET_KEYS = ("data.", "labels.", "features.", "train.holdout_fraction")
# how a trial runs, not what it learns: a trial trains in its own process, one at a time
NOT_SWEPT = ("train.workers", "train.worker_", "train.placement_strategy", "train.batches_per_call")
_EXAMPLE = "e.g. train.lr: {loguniform: [1.0e-4, 1.0e-2]} or model.d_model: {choice: [32, 64]}"


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config path
    kind: str  # one of DISTRIBUTIONS
    args: tuple[Any, ...]  # [low, high] for ranges, the values for choice/grid

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"

    @property
    def shapes_dataset(self) -> bool:
        return shapes_dataset(self.key)


@dataclass(frozen=True)
class Space:
    source: str  # the file it was read from
    dims: tuple[Dimension, ...]

    def to_dict(self) -> dict[str, dict[str, list[Any]]]:
        return {d.key: {d.kind: list(d.args)} for d in self.dims}

    def dataset_combos(self) -> list[dict[str, Any]]:
        """Every combination of the dataset-shaping keys' values (one dataset each)."""
        dims = [d for d in self.dims if d.shapes_dataset]
        return [
            dict(zip([d.key for d in dims], values, strict=True))
            for values in itertools.product(*(d.args for d in dims))
        ]

    def grid_size(self) -> int:
        return math.prod(len(d.args) for d in self.dims if d.kind == "grid")


def shapes_dataset(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in DATASET_KEYS)


def dataset_key(values: dict[str, Any]) -> str:
    """The name of the dataset a trial with ``values`` trains on (its dataset keys' values)."""
    return " ".join(f"{k}={values[k]!r}" for k in sorted(values) if shapes_dataset(k)) or "base"


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with dotted ``values`` applied, typed and validated like command-line overrides."""
    from pipelines.config import check as domain_check

    data = to_dict(cfg)
    for key, value in values.items():
        data = _apply_override(data, key.split("."), value)
    out = config_from_dict(data)
    from conf.validate import check

    check(out)
    domain_check(out)
    # secrets come out of to_dict as None; a trial never serves, but keep the caller's
    return dataclasses.replace(out, serve=cfg.serve)


def _leaf_type(key: str) -> Any:
    """The schema type of dotted ``key``; ConfigError naming it when it is no setting."""
    node: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            allowed = ", ".join(sorted(hints)) if hints else "(none: it is a value, not a section)"
            raise ConfigError(
                f"space key {key!r}: {'.'.join(parts[: i + 1])!r} is not a config setting; "
                f"{where} has {allowed} (see conf/default.yaml)"
            )
        node = hints[part]
    if isinstance(node, type) and dataclasses.is_dataclass(node):
        raise ConfigError(
            f"space key {key!r} is a section, not a setting; name one of its keys, e.g. "
            f"{key}.{dataclasses.fields(node)[0].name}"
        )
    return node


def _base_kind(tp: Any) -> str:
    """int, float, str, bool or other (lists, mappings): what distributions a key can take."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    for t in (bool, int, float, str):
        if tp is t:
            return t.__name__
    return "other"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _yaml_number(v: Any, tname: str) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string; for a number key it is a number."""
    if tname in ("float", "int") and isinstance(v, str):
        try:
            return float(v) if tname == "float" or not float(v).is_integer() else int(float(v))
        except ValueError:
            return v
    return v


def _check_range(key: str, kind: str, tname: str, args: Any) -> tuple[Any, ...]:
    if kind == "randint" and tname != "int":
        fix = "use uniform or loguniform" if tname == "float" else "use choice or grid"
        raise ConfigError(
            f"space key {key!r}: randint needs an int setting, {key} is {tname}; {fix}"
        )
    if kind in ("uniform", "loguniform") and tname not in ("float", "int"):
        raise ConfigError(
            f"space key {key!r}: {kind} needs a number setting, {key} is {tname}; "
            f"use choice or grid with its values, e.g. {key}: {{choice: [a, b]}}"
        )
    if kind in ("uniform", "loguniform") and tname == "int":
        raise ConfigError(
            f"space key {key!r}: {kind} draws floats, {key} is an int setting; "
            f"use randint: [low, high] (high excluded) or choice"
        )
    if isinstance(args, list):
        args = [_yaml_number(a, tname) for a in args]
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
        raise ConfigError(
            f"space key {key!r}: {kind} takes [low, high] as two finite numbers, got {args!r}; "
            f"e.g. {key}: {{{kind}: [{'1, 10' if kind == 'randint' else '1.0e-4, 1.0e-2'}]}}"
        )
    low, high = args
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise ConfigError(f"space key {key!r}: randint bounds must be whole numbers, got {args}")
    if high <= low:
        what = "empty (high is excluded)" if kind == "randint" else "empty or inverted"
        raise ConfigError(f"space key {key!r}: {kind} [{low}, {high}] is {what}; give low < high")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(
            f"space key {key!r}: loguniform [{low}, {high}] needs low > 0 (a log scale has no "
            "0); use e.g. [1.0e-5, 1.0e-2] or uniform"
        )
    if kind == "randint":
        return (int(low), int(high))
    return (float(low), float(high))


def _check_values(key: str, kind: str, tp: Any, args: Any) -> tuple[Any, ...]:
    if not isinstance(args, list) or not args:
        raise ConfigError(
            f"space key {key!r}: {kind} takes a non-empty list of values, got {args!r}; "
            f"e.g. {key}: {{{kind}: [a, b]}}"
        )
    values = []
    for v in (_yaml_number(a, _base_kind(tp)) for a in args):
        try:
            values.append(_coerce(v, tp, key))
        except ConfigError as exc:
            raise ConfigError(
                f"space key {key!r}: {kind} value {v!r} does not fit the setting ({exc}); "
                "give values of the setting's type (see conf/default.yaml)"
            ) from exc
    return tuple(list(v) if isinstance(v, tuple) else v for v in values)


def parse_space(data: Any, source: str, base: Config) -> Space:
    """Check ``data`` (the YAML read) against the schema and ``base``; ConfigError on the
    first problem, naming the key and the fix."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"space file {source} must map config keys to distributions ({_EXAMPLE}); "
            f"got {type(data).__name__ if data else 'nothing'}"
        )
    dims = []
    checked: list[tuple[str, str, tuple[Any, ...]]] = []
    for key, spec in data.items():
        key = str(key)
        if key.split(".")[0] not in SWEEPABLE:
            raise ConfigError(
                f"space key {key!r}: only settings a trial's training reads can be swept "
                f"({', '.join(s + '.*' for s in SWEEPABLE)}); set {key} as a KEY=VALUE "
                "override of the whole sweep instead"
            )
        if any(key.startswith(k) for k in NOT_SWEPT):
            raise ConfigError(
                f"space key {key!r} sets how a run trains through the ModelActor, which a trial "
                "does not use (it trains in its own process); leave it out of the space"
            )
        if key == "train.epochs":
            raise ConfigError(
                "space key 'train.epochs': a sweep's epochs are the base config's train.epochs "
                "(ASHA's max_t, every trial's length and the 'stopped early' label use it), so "
                "it cannot vary per trial; leave it out of the space and set it for the whole "
                "sweep, e.g. candleray sweep --space FILE train.epochs=8"
            )
        tp = _leaf_type(key)
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(
                f"space key {key!r}: give exactly one distribution of {', '.join(DISTRIBUTIONS)} "
                f"as a mapping, got {spec!r}; {_EXAMPLE}"
            )
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            raise ConfigError(
                f"space key {key!r}: unknown distribution {kind!r}; use one of "
                f"{', '.join(DISTRIBUTIONS)}"
            )
        tname = _base_kind(tp)
        if kind in ("uniform", "loguniform", "randint"):
            if shapes_dataset(key):
                raise ConfigError(
                    f"space key {key!r} shapes the dataset, which is built once per value "
                    f"before the trials; use choice or grid, e.g. {key}: {{grid: [a, b]}}"
                )
            parsed = _check_range(key, kind, tname, args)
            # a range's ends must be values the setting takes (randint's high is excluded)
            probes: tuple[Any, ...] = (parsed[0], parsed[1] - 1) if kind == "randint" else parsed
        else:
            parsed = _check_values(key, kind, tp, args)
            probes = parsed
        for value in probes:
            try:
                with_values(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(
                    f"space key {key!r}: {kind} value {value!r} is refused by the config: {exc}"
                ) from exc
        dims.append(Dimension(key, kind, parsed))
        checked.append((key, kind, probes))
    _check_combinations(base, checked)
    return Space(source, tuple(dims))


# about 1.5 ms a check: the whole cross-product up to this many, else every pair of keys
MAX_COMBOS = 2_000


def _check_combinations(base: Config, dims: list[tuple[str, str, tuple[Any, ...]]]) -> None:
    """Values fine alone can be refused together (d_model=12 with n_heads=8): check the
    cross-product of the finite values and range ends before any trial, or, past
    MAX_COMBOS, every pair of keys' (settings validated against each other come in pairs)."""
    if len(dims) < 2:
        return
    total = math.prod(len(p) for _, _, p in dims)
    groups = [dims] if total <= MAX_COMBOS else list(itertools.combinations(dims, 2))
    for group in groups:
        if math.prod(len(p) for _, _, p in group) > MAX_COMBOS:
            continue  # each value was checked alone
        for combo in itertools.product(*(p for _, _, p in group)):
            values = {key: v for (key, _, _), v in zip(group, combo, strict=True)}
            try:
                with_values(base, values)
            except ConfigError as exc:
                said = ", ".join(f"{k}={v!r}" for k, v in values.items())
                raise ConfigError(
                    f"space: the combination {said} is refused by the config: {exc}; "
                    "every combination of the space's values can be drawn, so change the "
                    "values so that each pair works (e.g. every model.d_model a multiple of "
                    "every model.n_heads)"
                ) from exc


def load_space(path: str | Path, base: Config) -> Space:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"space file {p} does not exist; give --space a YAML file such as conf/sweeps/demo.yaml"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"space file {p} is not valid YAML: {exc}") from exc
    return parse_space(data, str(p), base)


def tune_space(space: Space) -> dict[str, Any]:
    """The Ray Tune param_space: one flat entry per dotted key."""
    from ray import tune

    out: dict[str, Any] = {}
    for d in space.dims:
        if d.kind == "uniform":
            out[d.key] = tune.uniform(*d.args)
        elif d.kind == "loguniform":
            out[d.key] = tune.loguniform(*d.args)
        elif d.kind == "randint":
            out[d.key] = tune.randint(*d.args)
        elif d.kind == "choice":
            out[d.key] = tune.choice(list(d.args))
        else:
            out[d.key] = tune.grid_search(list(d.args))
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and not 1e-2 <= abs(v) < 1e4:
            mant, exp = f"{v:.1e}".split("e")
            return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{v:.3g}"
    return str(v)


def trial_name(values: dict[str, Any]) -> str:
    """``lr=3.2e-3 d_model=64``: each key by its last part unless two share it."""
    lasts = [k.rsplit(".", 1)[-1] for k in values]
    return " ".join(
        f"{last if lasts.count(last) == 1 else k}={_short(values[k])}"
        for k, last in zip(values, lasts, strict=True)
    )
