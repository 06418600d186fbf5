"""Read YAML config once into frozen dataclasses; reject unknown keys and wrong types.

Order of precedence: ``conf/default.yaml`` < profile (``conf/profiles/<name>.yaml`` or a
path) < dotted overrides from the command line (``model.d_model=128``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from conf.schema import Config
from pipelines.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top, got {type(data).__name__}"
        )
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as exc:
                last = exc
        raise last or ConfigError(f"{path}: bad value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: expected a mapping (section), got {type(value).__name__} {value!r}"
            )
        return _build(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        if not args:  # a plain dict (ccxt.options): handed on as written
            return dict(value)
        # dict[K, V]: every name and amount typed, so {1: x} or {gpu: "lots"} fail here
        return {
            _coerce(k, args[0], f"{path} key {k!r}"): _coerce(v, args[1], f"{path}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                f"{path}: expected true or false, got {type(value).__name__} {value!r}"
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (datetime.date, datetime.datetime)):  # YAML reads 2024-01-01 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(
        f"{path}: unsupported type {_type_name(tp)}"
    )  # a schema bug, not a user error


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix or "top level"
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{prefix}.{k}' if prefix else k for k in unknown)} at {where}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like section.key=value (e.g. model.d_model=128)"
        )
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any) -> dict:
    out = dict(data)
    node = out
    for p in parts[:-1]:
        child = node.get(p)
        node[p] = dict(child) if isinstance(child, dict) else {}
        node = node[p]
    node[parts[-1]] = value
    return out


def profile_path(profile: str) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        return p
    candidate = CONF_DIR / "profiles" / f"{profile}.yaml"
    if not candidate.exists():
        names = sorted(x.stem for x in (CONF_DIR / "profiles").glob("*.yaml"))
        raise ConfigError(
            f"unknown profile {profile!r}; choose one of {names} or give a path to a .yaml file"
        )
    return candidate


def load_config(
    profile: str | None = None, overrides: typing.Sequence[str] = (), *, resolve_paths: bool = True
) -> Config:
    """Load defaults, a profile and overrides into a frozen ``Config`` (validated)."""
    data = _read_yaml(CONF_DIR / "default.yaml")
    if profile:
        data = _merge(data, _read_yaml(profile_path(profile)))
    for text in overrides:
        data = _apply_override(data, *parse_override(text))
    cfg = _build(Config, data)
    from conf.token import with_token
    from conf.validate import check, resolve

    # the entry point's one read of the environment: the token may stay out of argv
    cfg = with_token(cfg, os.environ)

    check(cfg)
    return resolve(cfg) if resolve_paths else cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from ``to_dict`` output (checkpoint metadata, MLflow params)."""
    return _build(Config, data)


def to_dict(cfg: Any) -> dict:
    """Plain dict (lists for tuples) suitable for YAML, JSON and ``torch.save(weights_only)``.

    Fields marked secret (``field(metadata={"secret": True})``, e.g. ``serve.token``) come out
    as None: this dict goes into checkpoints, MLflow params and reports, never a secret. A URL
    marked ``{"secret": "password"}`` (``run.database_url``) keeps all but its password, which
    comes out as ``***``: where the data lives stays on record, the credential does not.
    """

    def field_value(f: dataclasses.Field, v: Any) -> Any:
        secret = f.metadata.get("secret")
        if secret == "password":
            return None if v is None else _hide_password(v)
        return None if secret else plain(v)

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: field_value(f, getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(cfg)
    assert isinstance(out, dict), f"to_dict takes a config dataclass, got {type(cfg).__name__}"
    return out


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "***"  # not a URL at all: nothing of it is known to be safe to write out
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
