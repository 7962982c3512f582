"""The operator's command line: check-config refuses private keys; invoice commands talk to the daemon."""

import os
import socket
import subprocess
import sys

from bip_utils import Bip32Slip10Secp256k1
from conftest import EXAMPLE
from harness import TESTNET_VERSIONS


def watcherd(*args, config):
    return subprocess.run([sys.executable, "-m", "watcherd", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def watcherd_raw(*args, env=None):
    """`python -m watcherd ARGS` with the arguments exactly as given (no --config added)."""
    return subprocess.run([sys.executable, "-m", "watcherd", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env)


def valid_config(path, listen="127.0.0.1:8420"):
    path.write_text(f'[store]\npath = "s.sqlite3"\n[api]\ntoken = "0123456789abcdef0"\nlisten = "{listen}"\n')
    return path


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


def test_check_config_and_run_refuse_the_unedited_example_naming_each_placeholder(tmp_path):
    """The shipped example fails until its CHANGE-ME secrets are set: one line per key, exit 2, and `run` starts
    nothing on it."""
    example = EXAMPLE.read_text().replace("/var/lib/watcherd/watcherd.sqlite3", str(tmp_path / "s.sqlite3"))
    config = tmp_path / "watcherd.toml"
    config.write_text(example)
    for command in ("check-config", "run"):
        result = watcherd(command, config=config)
        assert result.returncode == 2, result.stderr
        named = [line.split(": ")[1] for line in result.stderr.splitlines() if "placeholder (CHANGE-ME" in line]
        assert sorted(named) == ["api.token", "chains.btc.rpc_password", "chains.ltc.rpc_password",
                                 "webhook.secret"], result.stderr
    assert not (tmp_path / "s.sqlite3").exists()


def test_check_config_warns_of_a_secret_file_others_can_read(tmp_path):
    """A 0644 token file: check-config still says OK (exit 0) after one warning line naming the file and the
    fix; once it is 0600 the warning is gone."""
    token = tmp_path / "api-token"
    token.write_text("0123456789abcdef0\n")
    token.chmod(0o644)
    config = tmp_path / "watcherd.toml"
    config.write_text('[store]\npath = "s.sqlite3"\n[api]\ntoken_file = "api-token"\n')
    result = watcherd("check-config", config=config)
    assert result.returncode == 0 and "OK" in result.stdout
    assert result.stderr.splitlines() == [
        f"{config}: api.token_file: warning: {token} is open to its group or others (mode 0644): chmod 600 {token}"]
    token.chmod(0o600)
    result = watcherd("check-config", config=config)
    assert result.returncode == 0 and result.stderr == ""


def test_config_is_accepted_before_and_after_the_command(tmp_path):
    """`watcherd --config PATH check-config` and `watcherd check-config --config PATH` read the same file;
    given in both places, the one after the command wins; WATCHERD_CONFIG still works, and loses to both."""
    good = valid_config(tmp_path / "good.toml")
    missing = tmp_path / "missing.toml"
    before = watcherd_raw("--config", good, "check-config")
    after = watcherd_raw("check-config", "--config", good)
    for result in (before, after):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{good}: OK")
    later_wins = watcherd_raw("--config", missing, "check-config", "--config", good)
    assert later_wins.returncode == 0 and later_wins.stdout.startswith(f"{good}: OK"), later_wins.stderr
    later_wins = watcherd_raw("--config", good, "check-config", "--config", missing)
    assert later_wins.returncode == 2 and f"{missing}: (file): cannot read" in later_wins.stderr
    env = {**os.environ, "WATCHERD_CONFIG": str(missing)}
    for args in (["check-config", "--config", good], ["--config", good, "check-config"]):
        result = watcherd_raw(*args, env=env)
        assert result.returncode == 0 and result.stdout.startswith(f"{good}: OK"), result.stderr
    from_env = watcherd_raw("check-config", env={**os.environ, "WATCHERD_CONFIG": str(good)})
    assert from_env.returncode == 0 and from_env.stdout.startswith(f"{good}: OK"), from_env.stderr


def test_run_and_invoice_commands_take_config_after_the_command(tmp_path):
    """`run` and the API commands read the file named after them: the refusal and the API address prove which."""
    with socket.socket() as probe:  # a port nobody listens on: the invoice command must fail to connect there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    good = valid_config(tmp_path / "good.toml", listen=f"127.0.0.1:{port}")
    broken = tmp_path / "broken.toml"
    broken.write_text('[store]\npath = "s.sqlite3"\n[api]\ntoken = "short"\n')
    run = watcherd_raw("--config", good, "run", "--config", broken)
    assert run.returncode == 2 and f"{broken}: api.token:" in run.stderr
    assert not (tmp_path / "s.sqlite3").exists()
    for args in (["invoice", "create", "--config", good, "--chain", "btc", "--amount", "0.01"],
                 ["invoice", "--config", good, "list"],
                 ["--config", broken, "webhooks", "list", "--config", good]):
        result = watcherd_raw(*args)
        assert result.returncode == 1, result.stderr
        assert f"cannot reach the daemon's API at 127.0.0.1:{port}" in result.stderr
