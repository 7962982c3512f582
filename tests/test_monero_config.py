"""[chains.*] kind = "monero": the view key only; the spend key, a seed, a mismatched view key are refused.

The wallet here is made fresh per test with the `monero` package (its seed never leaves the test)."""

from pathlib import Path

import pytest
from monero.seed import Seed

from watcherd.chains.monero.config import MoneroChainConfig
from watcherd.chains.monero.crypto import decode_address
from watcherd.config import load
from watcherd.exceptions import ConfigError

TOKEN = "tok-0123456789abcdef"


@pytest.fixture(scope="module")
def wallet() -> Seed:
    return Seed()


def config(tmp_path: Path, chain: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(f'[store]\npath = "w.sqlite3"\n[api]\ntoken = "{TOKEN}"\n[chains.xmr]\nkind = "monero"\n{chain}')
    return path


def problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as error:
        load(path)
    assert {file for file, _, _ in error.value.problems} == {str(path)}
    return {key: message for _, key, message in error.value.problems}


def chain_lines(address: str, key_line: str, network: str = "mainnet") -> str:
    return f'network = "{network}"\nrpc_url = "http://127.0.0.1:18081"\nprimary_address = "{address}"\n{key_line}\n'


def test_view_key_from_file_and_defaults(tmp_path, wallet):
    """The documented minimal table loads; the view key is read from a file and never shown in repr."""
    (tmp_path / "view.key").write_text(wallet.secret_view_key() + "\n")
    loaded = load(config(tmp_path, chain_lines(wallet.public_address(), 'view_key_file = "view.key"')))
    chain = loaded.chains["xmr"]
    assert isinstance(chain, MoneroChainConfig)
    assert (chain.account, chain.confirmations, chain.asset, chain.decimals) == (0, 10, "XMR", 12)
    assert chain.zmq_pub is None and chain.network.name == "mainnet" and chain.network.nettype == "mainnet"
    assert chain.max_reorg_depth == 100
    assert chain.view_key.hex() == wallet.secret_view_key()
    assert wallet.secret_view_key() not in repr(chain)
    address, key = chain.address_deriver().derive(0)
    assert decode_address(address).kind == "subaddress" and key == decode_address(address).spend_public


def test_regtest_uses_mainnet_prefixes_and_stagenet_address_is_rejected(tmp_path, wallet):
    lines = chain_lines(wallet.public_address(), f'view_key = "{wallet.secret_view_key()}"', "regtest")
    loaded = load(config(tmp_path, lines + 'zmq_pub = "tcp://127.0.0.1:18083"\naccount = 3\n'))
    assert loaded.chains["xmr"].account == 3
    assert (loaded.chains["xmr"].network.name, loaded.chains["xmr"].network.nettype) == ("mainnet", "fakechain")
    stagenet = wallet.public_address(net="stage")
    found = problems(config(tmp_path, chain_lines(stagenet, f'view_key = "{wallet.secret_view_key()}"')))
    assert "stagenet address" in found["chains.xmr.primary_address"]


def test_spend_key_is_refused(tmp_path, wallet):
    """The private spend key in the view key's place: refused, naming what it is."""
    spend_line = f'view_key = "{wallet.secret_spend_key()}"'
    found = problems(config(tmp_path, chain_lines(wallet.public_address(), spend_line)))
    assert "SPEND key" in found["chains.xmr.view_key"] and "refused" in found["chains.xmr.view_key"]
    found = problems(config(tmp_path, chain_lines(wallet.public_address(),
                                                  f'spend_key = "{wallet.secret_spend_key()}"')))
    assert "refused" in found["chains.xmr.spend_key"]


def test_view_key_of_another_wallet_is_an_error(tmp_path, wallet):
    other = Seed()
    found = problems(config(tmp_path, chain_lines(wallet.public_address(), f'view_key = "{other.secret_view_key()}"')))
    assert "not the private view key of primary_address" in found["chains.xmr.view_key"]


def test_monero_seed_is_refused_anywhere(tmp_path, wallet):
    """A 25-word Monero mnemonic, inline under any key or in the view key file, is refused."""
    found = problems(config(tmp_path, chain_lines(wallet.public_address(), f'view_key = "{wallet.phrase}"')))
    assert "Monero mnemonic seed (25 words)" in found["chains.xmr.view_key"]
    (tmp_path / "view.key").write_text(wallet.phrase + "\n")
    found = problems(config(tmp_path, chain_lines(wallet.public_address(), 'view_key_file = "view.key"')))
    assert "Monero mnemonic" in found["chains.xmr.view_key_file"]
    found = problems(config(tmp_path, chain_lines(wallet.public_address(), f'view_key = "{wallet.secret_view_key()}"')
                            + f'notes = "{wallet.phrase}"\n'))
    assert "Monero mnemonic" in found["chains.xmr.notes"]


@pytest.mark.parametrize("address, message", [
    ("4" + "1" * 94, "not a valid Monero address"),
    (None, "primary address, not a subaddress"),
])
def test_bad_addresses(tmp_path, wallet, address, message):
    if address is None:  # a subaddress of the wallet where the primary address belongs
        key = bytes.fromhex(wallet.secret_view_key())
        chain = load(config(tmp_path, chain_lines(wallet.public_address(), f'view_key = "{key.hex()}"'))).chains["xmr"]
        address = chain.address_deriver().derive(0)[0]
    found = problems(config(tmp_path, chain_lines(address, f'view_key = "{wallet.secret_view_key()}"')))
    assert message in found["chains.xmr.primary_address"]


def test_bad_values(tmp_path, wallet):
    lines = chain_lines(wallet.public_address(), 'view_key = "zz"') + (
        'confirmations = 0\nzmq_pub = "localhost"\nrpc_user = "u"\n'
    )
    found = problems(config(tmp_path, lines))
    assert set(found) >= {"chains.xmr.view_key", "chains.xmr.confirmations", "chains.xmr.zmq_pub",
                          "chains.xmr.rpc_password"}
