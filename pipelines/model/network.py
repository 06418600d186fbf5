"""The candle transformer: a window of normalised candles → next candle + action logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from conf.schema import ModelConfig
from pipelines.data.features import N_CANDLE_TARGETS


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the exact network; stored in every checkpoint."""

    n_features: int
    window: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.1

    @classmethod
    def from_config(cls, cfg: ModelConfig, n_features: int, window: int) -> ModelSpec:
        return cls(
            n_features=n_features,
            window=window,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_layers=cfg.n_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
        )

    def to_dict(self) -> dict:
        return asdict(self)


class CandleTransformer(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.d_model
        self.inp = nn.Linear(spec.n_features, d)
        self.pos = nn.Parameter(torch.zeros(1, spec.window, d))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, spec.n_heads, spec.dim_feedforward, spec.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, spec.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.candle_head = nn.Linear(2 * d, N_CANDLE_TARGETS)
        self.action_head = nn.Linear(2 * d, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F) → candle (B, 5) normalised next candle, logits (B, 3) HOLD/BUY/SELL."""
        b, t, f = x.shape
        assert t == self.spec.window and f == self.spec.n_features, (
            f"expected windows of shape (B, {self.spec.window}, {self.spec.n_features}), got {tuple(x.shape)}"
        )
        h = self.encoder(self.inp(x) + self.pos)  # (B, T, d)
        h = self.norm(h)
        z = torch.cat([h[:, -1], h.mean(dim=1)], dim=-1)  # (B, 2d): last bar and whole window
        return self.candle_head(z), self.action_head(z)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from pipelines.errors import ConfigError

        raise ConfigError(
            f"model.device={name!r} but no CUDA device is visible; use model.device=auto or cpu"
        )
    return dev
