"""The Monero chain kind (see watcherd/chains/registry.py)."""

from __future__ import annotations

from typing import Any


def make_adapter(config: Any) -> Any:
    from watcherd.chains.monero.adapter import MoneroAdapter

    return MoneroAdapter(config)
