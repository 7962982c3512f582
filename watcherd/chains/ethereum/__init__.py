"""The Ethereum chain kind (see watcherd/chains/registry.py)."""

from __future__ import annotations

from typing import Any


def make_adapter(config: Any) -> Any:
    from watcherd.chains.ethereum.adapter import EthereumAdapter

    return EthereumAdapter(config)
