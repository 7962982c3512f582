"""The Bitcoin chain kind (see watcherd/chains/registry.py)."""

from __future__ import annotations

from typing import Any

from watcherd.chains.bitcoin.config import parse_config

__all__ = ["make_adapter", "parse_config"]


def make_adapter(config: Any) -> Any:
    from watcherd.chains.bitcoin.adapter import BitcoinAdapter

    return BitcoinAdapter(config)
