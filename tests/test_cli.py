"""The operator's command line: check-config refuses private keys; invoice commands talk to the daemon."""

import subprocess
import sys

from bip_utils import Bip32Slip10Secp256k1
from harness import TESTNET_VERSIONS


def watcherd(*args, config):
    return subprocess.run([sys.executable, "-m", "watcherd", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_private_key_config_is_refused_by_check_config_and_run(tmp_path):
    xprv = Bip32Slip10Secp256k1.FromSeed(bytes(32), TESTNET_VERSIONS).PrivateKey().ToExtended()
    config = tmp_path / "watcherd.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path}/s.sqlite3"\n[api]\ntoken = "0123456789abcdef0"\n'
        f'[chains.btc]\nkind = "bitcoin"\ncoin = "bitcoin"\nnetwork = "regtest"\nrpc_url = "http://127.0.0.1:1"\n'
        f'rpc_user = "u"\nrpc_password = "p"\nxpub = "{xprv}"\n'
    )
    for command in ("check-config", "run"):
        result = watcherd(command, config=config)
        assert result.returncode == 2
        assert f"{config}: chains.btc.xpub: refused" in result.stderr
        assert "PRIVATE" in result.stderr and xprv not in result.stderr + result.stdout
    assert not (tmp_path / "s.sqlite3").exists()  # nothing started


def test_check_config_ok_and_every_error_named(tmp_path):
    config = tmp_path / "watcherd.toml"
    config.write_text('[store]\npath = "s.sqlite3"\n[api]\ntoken = "short"\nlisten = "nowhere"\n')
    result = watcherd("check-config", config=config)
    assert result.returncode == 2
    assert f"{config}: api.token:" in result.stderr and f"{config}: api.listen:" in result.stderr
    config.write_text('[store]\npath = "s.sqlite3"\n[api]\ntoken = "0123456789abcdef0"\n')
    result = watcherd("check-config", config=config)
    assert result.returncode == 0 and "OK" in result.stdout
