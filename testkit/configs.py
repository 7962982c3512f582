"""The `[chains.<name>]` tables of a watcherd config for devnet nodes: the one place the test kit writes them.

`Devnet.write_config` (the demo, `scripts/devnet up`) and the tests' harness both build their configs from
these. Each writer takes the node (for its endpoints) and the operator's public keys; every value goes
through `toml_value`, so passwords and paths with quotes in them stay valid TOML.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from testkit.bitcoin_node import COIN_OF_KIND
from testkit.eth_node import TOKENS


def toml_value(value: Any) -> str:
    """A TOML literal for a str, int, float or bool (a JSON string literal is a valid TOML basic string)."""
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _table(name: str, kind: str, keys: dict[str, Any], extra: dict[str, Any]) -> list[str]:
    lines = [f"[chains.{name}]", f"kind = {toml_value(kind)}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in {**keys, **extra}.items() if value is not None]
    return lines


def bitcoin_table(name: str, node: Any, *, xpub: str, address_type: str, confirmations: int,
                  poll_interval_seconds: float = 0.5, zmq: bool = True, **extra: Any) -> str:
    """A bitcoin-kind table for a bitcoind/litecoind node (`kind`, `rpc_url`, `rpc_user`, `rpc_password`,
    `zmq_endpoint`). `zmq=False` leaves its ZMQ endpoints out (the daemon then polls); `extra` adds keys."""
    keys = {
        "coin": COIN_OF_KIND[node.kind],
        "network": "regtest",
        "rpc_url": node.rpc_url,
        "rpc_user": node.rpc_user,
        "rpc_password": node.rpc_password,
        "zmq_rawtx": node.zmq_endpoint if zmq else None,
        "zmq_hashblock": node.zmq_endpoint if zmq else None,
        "xpub": xpub,
        "address_type": address_type,
        "confirmations": int(confirmations),
        "poll_interval_seconds": float(poll_interval_seconds),
    }
    return "\n".join(_table(name, "bitcoin", keys, extra)) + "\n"


def ethereum_table(name: str, node: Any, *, xpub: str, confirmations: int, tokens: Iterable[str] | None = None,
                   chain_id: int | None = None, **extra: Any) -> str:
    """An ethereum-kind table for an anvil node, with `tokens` (default: every test token it has deployed) as
    `[[chains.<name>.tokens]]`; `chain_id` overrides the node's own (to test a mismatch)."""
    keys = {
        "ws_url": node.ws_url,
        "chain_id": node.chain_id if chain_id is None else chain_id,
        "xpub": xpub,
        "confirmations": int(confirmations),
    }
    lines = _table(name, "ethereum", keys, extra)
    symbols = [s for s in TOKENS if s in node.contracts] if tokens is None else list(tokens)
    for symbol in symbols:
        lines += ["", f"[[chains.{name}.tokens]]", f"symbol = {toml_value(symbol)}",
                  f"contract = {toml_value(node.contracts[symbol])}", f"decimals = {TOKENS[symbol]}"]
    return "\n".join(lines) + "\n"


def monero_table(name: str, node: Any, *, primary_address: str, view_key: str, confirmations: int,
                 poll_interval_seconds: float = 0.5, zmq: bool = True, **extra: Any) -> str:
    """A monero-kind table for a monerod: only the operator's primary address and PRIVATE VIEW key (it sees
    payments, it cannot spend them); never the spend key."""
    keys = {
        "network": "regtest",
        "rpc_url": node.rpc_url,
        "zmq_pub": node.zmq_endpoint if zmq else None,
        "primary_address": primary_address,
        "view_key": view_key,
        "confirmations": int(confirmations),
        "poll_interval_seconds": float(poll_interval_seconds),
    }
    return "\n".join(_table(name, "monero", keys, extra)) + "\n"
