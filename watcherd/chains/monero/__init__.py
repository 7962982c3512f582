"""The Monero chain kind (see watcherd/chains/registry.py)."""

from __future__ import annotations

from typing import Any

from watcherd.chains.monero.config import parse_config

__all__ = ["make_adapter", "parse_config"]


def make_adapter(config: Any) -> Any:
    from watcherd.chains.monero.adapter import MoneroAdapter

    return MoneroAdapter(config)
