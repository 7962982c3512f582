"""[chains.X] kind = "ethereum": every key validated, every problem named by its key."""

from __future__ import annotations

import os

import pytest
from bip_utils import Bip44, Bip44Coins

from watcherd.chains.ethereum.config import EthereumChainConfig
from watcherd.config import load
from watcherd.exceptions import ConfigError

HEAD = '[store]\npath = "w.sqlite3"\n[api]\ntoken = "0123456789abcdef0123"\n'
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"  # mainnet USDC, EIP-55


def account(seed: bytes | None = None) -> Bip44:
    return Bip44.FromSeed(seed or os.urandom(32), Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)


XPUB = account(bytes(range(32))).PublicKey().ToExtended()


def write(tmp_path, chains: str):
    path = tmp_path / "watcherd.toml"
    path.write_text(HEAD + chains)
    return path


def problems(path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return {key: message for _, key, message in info.value.problems}


def eth(**overrides: str) -> str:
    keys = {"kind": '"ethereum"', "ws_url": '"ws://127.0.0.1:8546"', "chain_id": "1", "xpub": f'"{XPUB}"'}
    keys.update(overrides)
    body = "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
    return "[chains.eth]\n" + body


def test_minimal_ethereum_chain_defaults(tmp_path):
    """Defaults an operator relies on: 12 confirmations, ETH, no tokens, 15 min expiry."""
    chain = load(write(tmp_path, eth())).chains["eth"]
    assert isinstance(chain, EthereumChainConfig)
    assert (chain.kind, chain.chain_id, chain.confirmations, chain.finality, chain.asset, chain.tokens) == (
        "ethereum", 1, 12, None, "ETH", ())
    assert chain.invoice_expiry_seconds == 900 and chain.start_height is None and chain.max_reorg_depth == 128


def test_tokens_are_parsed_and_checksummed(tmp_path):
    """A lower-case contract is accepted and stored EIP-55 checksummed; decimals come from the config."""
    text = eth(asset='"POL"', confirmations="64") + (
        f'[[chains.eth.tokens]]\nsymbol = "USDC"\ncontract = "{USDC.lower()}"\ndecimals = 6\n'
        '[[chains.eth.tokens]]\nsymbol = "USDT"\ncontract = "0xdac17f958d2ee523a2206206994597c13d831ec7"\n'
        "decimals = 6\n"
    )
    chain = load(write(tmp_path, text)).chains["eth"]
    assert [(t.symbol, t.contract, t.decimals) for t in chain.tokens] == [
        ("USDC", USDC, 6), ("USDT", "0xdAC17F958D2ee523a2206206994597C13D831ec7", 6)]
    assert chain.asset == "POL" and chain.confirmations == 64


def test_bad_token_entries_are_named(tmp_path):
    bad_checksum = USDC.replace("A0b8", "a0B8")
    text = eth() + (
        f'[[chains.eth.tokens]]\nsymbol = "USDC"\ncontract = "{bad_checksum}"\ndecimals = 6\n'
        '[[chains.eth.tokens]]\nsymbol = "ETH"\ncontract = "0x12"\ndecimals = 99\nextra = 1\n'
    )
    found = problems(write(tmp_path, text))
    assert found["chains.eth.tokens[0].contract"].startswith("bad EIP-55 checksum (did you mean")
    assert found["chains.eth.tokens[1].symbol"] == "'ETH' is already an asset of this chain"
    assert found["chains.eth.tokens[1].contract"] == "must be 0x followed by 40 hex digits"
    assert found["chains.eth.tokens[1].decimals"].startswith("must be an integer")
    assert found["chains.eth.tokens[1].extra"] == "unknown key"


def test_required_keys_and_bad_values(tmp_path):
    found = problems(write(tmp_path, eth(ws_url='"http://127.0.0.1:8545"', chain_id="0", xpub=None)))
    assert found["chains.eth.ws_url"].startswith("must be a websocket URL")
    assert found["chains.eth.chain_id"].startswith("must be an integer ≥ 1")
    assert found["chains.eth.xpub"].startswith("is required")


def test_finality_and_confirmations_are_exclusive(tmp_path):
    chain = load(write(tmp_path, eth(finality='"finalized"'))).chains["eth"]
    assert chain.finality == "finalized"
    found = problems(write(tmp_path, eth(finality='"finalized"', confirmations="3")))
    assert found["chains.eth.finality"] == 'set confirmations or finality = "finalized", not both'
    assert problems(write(tmp_path, eth(finality='"safe"')))["chains.eth.finality"] == "must be one of: finalized"


def test_xpub_must_be_the_account_level_key(tmp_path):
    """A coin-level or address-level key would derive other addresses than the operator's wallet."""
    coin_level = Bip44.FromSeed(os.urandom(32), Bip44Coins.ETHEREUM).Purpose().Coin().PublicKey().ToExtended()
    found = problems(write(tmp_path, eth(xpub=f'"{coin_level}"')))
    assert "m/44'/60'/0', depth 3" in found["chains.eth.xpub"]


def test_a_mistyped_xpub_is_a_config_error_not_a_crash(tmp_path):
    """One character changed: the base58 checksum fails, and check-config says so under the key."""
    good = XPUB
    typo = good[:-1] + ("1" if good[-1] != "1" else "2")
    found = problems(write(tmp_path, eth(xpub=f'"{typo}"')))
    assert "bad base58 checksum" in found["chains.eth.xpub"]


def test_xprv_is_refused(tmp_path):
    """Watch-only: the account's private key is refused wherever it appears, and never echoed back."""
    xprv = account().PrivateKey().ToExtended()
    found = problems(write(tmp_path, eth(xpub=f'"{xprv}"')))
    assert found["chains.eth.xpub"].startswith("refused:")
    assert xprv not in str(found)


def test_two_evm_chains_may_share_a_key_only_on_different_chain_ids(tmp_path):
    """Base and mainnet on one account is the operator's choice; the same chain id twice is a mistake."""
    same = eth() + eth().replace("[chains.eth]", "[chains.eth2]")
    found = problems(write(tmp_path, same))
    assert "derives the same addresses as chains.eth" in found["chains.eth2.xpub"]
    other = eth() + eth(chain_id="8453").replace("[chains.eth]", "[chains.base]")
    assert set(load(write(tmp_path, other)).chains) == {"eth", "base"}
