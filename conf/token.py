"""Where ``serve.token`` comes from: the config, a file (``serve.token_file``) or the
environment (``CANDLERAY_SERVE_TOKEN``), read once when the config is loaded.

A token on the command line (``serve.token=...``) is in the process's argv, which every local
user can read with ``ps``; a file or an environment variable stays out of it. Precedence:
``serve.token`` > ``serve.token_file`` > ``CANDLERAY_SERVE_TOKEN``; naming both config keys
is an error, since one of them would be silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from conf.schema import Config
from pipelines.errors import ConfigError

ENV_VAR = "CANDLERAY_SERVE_TOKEN"


def read_token_file(path: str) -> str:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"serve.token_file={path!r} cannot be read ({type(exc).__name__}); give a readable "
            "file holding the token on its first line (e.g. made by `openssl rand -hex 32`)"
        ) from exc
    token = text.strip()
    if not token or "\n" in token:
        raise ConfigError(
            f"serve.token_file={path!r} must hold the token alone on one line "
            f"({'it is empty' if not token else 'it has several lines'})"
        )
    return token


def with_token(cfg: Config, environ: Mapping[str, str]) -> Config:
    """``cfg`` with ``serve.token`` filled from ``serve.token_file`` or ``environ`` when unset."""
    s = cfg.serve
    if s.token is not None and s.token_file is not None:
        raise ConfigError(
            "serve.token and serve.token_file are both set; give one (serve.token_file keeps "
            "the token out of the command line)"
        )
    if s.token is not None:
        return cfg
    if s.token_file is not None:
        token: str | None = read_token_file(s.token_file)
    else:
        token = environ.get(ENV_VAR, "").strip() or None
    if token is None:
        return cfg
    return dataclasses.replace(cfg, serve=dataclasses.replace(s, token=token))
