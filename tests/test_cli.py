"""The operator's command line: check-config refuses private keys; invoice commands talk to the daemon."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bip_utils import Bip32Slip10Secp256k1
from conftest import EXAMPLE, wait_for
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
    """The shipped example fails until its CHANGE-ME secrets, its webhook host and its public test-vector keys
    are replaced: one line per key, exit 2, and `run` starts nothing on it."""
    example = EXAMPLE.read_text().replace("/var/lib/watcherd/watcherd.sqlite3", str(tmp_path / "s.sqlite3"))
    config = tmp_path / "watcherd.toml"
    config.write_text(example)
    for command in ("check-config", "run"):
        result = watcherd(command, config=config)
        assert result.returncode == 2, result.stderr
        named = [line.split(": ")[1] for line in result.stderr.splitlines() if "placeholder (CHANGE-ME" in line]
        assert sorted(named) == ["api.token", "chains.btc.rpc_password", "chains.ltc.rpc_password",
                                 "webhook.secret"], result.stderr
        vectors = {line.split(": ")[1]: line for line in result.stderr.splitlines() if "public test vector" in line}
        assert sorted(vectors) == ["chains.btc.xpub", "chains.ltc.xpub"], result.stderr
        assert "\"abandon ... about\" at m/84'/0'/0'" in vectors["chains.btc.xpub"]
        assert "\"abandon ... about\" at m/84'/2'/0'" in vectors["chains.ltc.xpub"]
        assert f"{config}: webhook.url: is the example's placeholder" in result.stderr
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


# ---- the commands that talk to the daemon: what they need, and what they print --------------------------------


def offline_chains() -> str:
    """btc and ltc tables whose nodes are not there: invoices are created, priced and picked all the same
    (addresses come from the account keys), which is what the output tests need."""
    from harness import account_tpub

    tables = []
    for name, coin, purpose, address_type in (("btc", "bitcoin", 44, "p2pkh"), ("ltc", "litecoin", 84, "p2wpkh")):
        tables.append(f'[chains.{name}]\nkind = "bitcoin"\ncoin = "{coin}"\nnetwork = "regtest"\n'
                      f'rpc_url = "http://127.0.0.1:1"\nrpc_user = "u"\nrpc_password = "p"\n'
                      f'xpub = "{account_tpub(purpose)}"\naddress_type = "{address_type}"\n')
    return "".join(tables)


def host_config(daemon, path):
    """The daemon's config as it reads on the host after the install's `sed`: every secret a file under
    /run/credentials that only the service could read (here: missing), the webhook's and a chain's too."""
    from harness import account_tpub

    gone = "/run/credentials/watcherd.service"
    text = daemon.config_path.read_text()
    text = re.sub(r'(?m)^token = .*$', f'token_file = "{gone}/api-token"', text)
    text = re.sub(r'(?m)^secret = .*$', f'secret_file = "{gone}/webhook-secret"', text)
    text += (f'[chains.btc]\nkind = "bitcoin"\ncoin = "bitcoin"\nnetwork = "regtest"\nrpc_url = "http://127.0.0.1:1"\n'
             f'rpc_user = "u"\nrpc_password_file = "{gone}/btc-rpc-password"\nxpub = "{account_tpub(44)}"\n')
    path.write_text(text)
    return path


def test_status_and_invoice_commands_work_on_the_host_with_a_token_file(daemon_factory, tmp_path):
    """After the install's credential step the config names files only the service can read: `status` tells
    whether it is ready without a token (the detail with one), `invoice list` works with --token-file or
    WATCHERD_TOKEN_FILE (the one after the command wins), neither reads the webhook secret nor a chain's
    password, and without a token file the refusal says what to pass. Against the real daemon."""
    from harness import TOKEN

    daemon = daemon_factory("")
    config = host_config(daemon, tmp_path / "host.toml")
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token-0123456789\n")

    status = watcherd("status", config=config)  # no token: /readyz tells only whether it is ready
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("ready (the API token gives the detail") and "btc" not in status.stdout
    status = watcherd("status", "--token-file", token_file, config=config)
    assert status.returncode == 0, status.stderr
    assert "ready, store writable" in status.stdout

    refused = watcherd("invoice", "list", config=config)
    assert refused.returncode == 2
    assert "api.token_file: cannot read /run/credentials/watcherd.service/api-token" in refused.stderr
    assert "--token-file" in refused.stderr and "WATCHERD_TOKEN_FILE" in refused.stderr
    assert "webhook" not in refused.stderr and "chains" not in refused.stderr

    listed = watcherd("invoice", "list", "--token-file", token_file, config=config)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "no invoices\n"
    from_env = watcherd_raw("--config", config, "invoice", "list",
                            env={**os.environ, "WATCHERD_TOKEN_FILE": str(token_file)})
    assert from_env.returncode == 0 and from_env.stdout == "no invoices\n", from_env.stderr
    later_wins = watcherd_raw("--config", config, "invoice", "list", "--token-file", wrong,
                              env={**os.environ, "WATCHERD_TOKEN_FILE": str(token_file)})
    assert later_wins.returncode == 1 and "401" in later_wins.stderr
    missing = watcherd("invoice", "list", "--token-file", tmp_path / "nope", config=config)
    assert missing.returncode == 2 and f"--token-file: cannot read {tmp_path / 'nope'}" in missing.stderr


def on_a_terminal(*args, env=None):
    """`python -m watcherd ARGS` with its stdout on a pseudo-terminal, as an operator's shell runs it."""
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "watcherd", *map(str, args)], stdout=follower,
                              stderr=subprocess.PIPE, timeout=60, env=env)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr
    return out.decode()


def column_starts(line, names):
    return [line.index(name) for name in names]


@pytest.mark.nodes  # the daemon as a process
def test_invoice_tables_show_methods_amounts_page_and_the_picked_address(tmp_path):
    """A priced invoice made from the command line (rates and methods as options) shows each method's amount
    (0.00098 BTC / 0.49 LTC at 50,000 and 100 USD), its order id, expiry and page; after the customer picks LTC,
    `show` gives LTC's own address on LTC's row; tables have a header and aligned columns, an empty list says
    so, colour appears only on a terminal and never with NO_COLOR, redelivery without a [webhook] is refused
    instead of answered "queued", and an id never reaches another route. Against the real daemon."""
    from harness import Daemon

    daemon = Daemon(tmp_path / "d", offline_chains()).start()
    config = daemon.config_path
    try:
        quiet = watcherd("invoice", "create", "--currency", "USD", "--amount", "1.00", "--rate", "BTC=50000",
                         "--method", "btc", "--quiet", config=config)
        assert quiet.returncode == 0 and re.fullmatch(r"inv_[0-9a-f]+\n", quiet.stdout), quiet.stdout + quiet.stderr
        created = watcherd("invoice", "create", "--currency", "USD", "--amount", "49.00", "--rate", "BTC=50000",
                           "--rate", "LTC=100", "--method", "btc", "--method", "ltc", "--order-id", "A-1",
                           config=config)
        assert created.returncode == 0, created.stderr
        out = created.stdout
        invoice_id = re.search(r"^invoice +(inv_[0-9a-f]+)$", out, re.MULTILINE)[1]
        assert re.search(r"^order id +A-1$", out, re.MULTILINE)
        assert re.search(rf"^page +http://127\.0\.0\.1:{daemon.port}/i/{invoice_id}$", out, re.MULTILINE)
        assert re.search(r"^expires +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  \(in 1[45] min\)$", out, re.MULTILINE), out
        assert re.search(r"^METHOD +AMOUNT +DUE +RATE +CONF +ADDRESS$", out, re.MULTILINE), out
        assert re.search(r"^btc +0\.00098 BTC +0\.00098 BTC +50000 USD +2 +not picked$", out, re.MULTILINE), out
        assert re.search(r"^ltc +0\.49 LTC +0\.49 LTC +100 USD +2 +not picked$", out, re.MULTILINE), out

        picked = watcherd("invoice", "pick", invoice_id, "ltc", config=config)
        assert picked.returncode == 0, picked.stderr
        ltc = next(m for m in daemon.invoice(invoice_id)["payment_methods"] if m["method"] == "ltc")
        assert f"pay 0.49 LTC: litecoin:{ltc['address']}?amount=0.49" in picked.stdout
        shown = watcherd("invoice", "show", invoice_id, config=config).stdout
        assert re.search(rf"^ltc +0\.49 LTC .* {ltc['address']}$", shown, re.MULTILINE), shown
        assert re.search(r"^btc +0\.00098 BTC .* not picked$", shown, re.MULTILINE), shown

        listed = watcherd("invoice", "list", config=config)
        assert listed.returncode == 0 and "\x1b" not in listed.stdout  # piped: no colour
        header, *rows = listed.stdout.splitlines()
        names = ["INVOICE", "STATUS", "ORDER ID", "EXPIRES", "METHODS"]
        assert header.split()[:2] == ["INVOICE", "STATUS"] and len(rows) == 2
        priced = next(row for row in rows if row.startswith(invoice_id))
        assert priced.endswith("0.00098 BTC, 0.49 LTC") and " 49.00 USD " in priced
        for row in rows:  # left-aligned columns start under their header
            assert [row[i - 1] == " " and row[i] != " " for i in column_starts(header, names)[1:]] == [True] * 4
        assert watcherd("invoice", "list", "--status", "paid", config=config).stdout == "no invoices\n"

        coloured = on_a_terminal("--config", config, "invoice", "list")
        assert "\x1b[1mINVOICE" in coloured and "0.00098 BTC, 0.49 LTC" in coloured
        plain = on_a_terminal("--config", config, "invoice", "list", env={**os.environ, "NO_COLOR": "1"})
        assert "\x1b" not in plain and "0.00098 BTC, 0.49 LTC" in plain

        event_id = daemon.api("GET", f"/v1/invoices/{invoice_id}/events")["events"][0]["id"]
        redeliver = watcherd("webhooks", "redeliver", event_id, config=config)
        assert redeliver.returncode == 1 and "queued" not in redeliver.stdout
        assert "has no [webhook] (nor [mqtt]) table: there is nowhere to redeliver" in redeliver.stderr
        # an id is one path segment: "<id>/events" names no invoice, it does not reach the events route
        other_route = watcherd("invoice", "show", f"{invoice_id}/events", config=config)
        assert other_route.returncode == 1 and f"404: no invoice '{invoice_id}/events'" in other_route.stderr
        bad_rate = watcherd("invoice", "create", "--currency", "USD", "--amount", "1", "--rate", "BTC", config=config)
        assert bad_rate.returncode == 2 and "'BTC' is not COIN=PRICE" in bad_rate.stderr
    finally:
        daemon.stop()


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "cli"
SGR = re.compile(r"\x1b\[([\d;]*)m")
PALETTE = {30: "#2e3436", 31: "#cc0000", 32: "#4e9a06", 33: "#c4a000", 34: "#3465a4", 35: "#75507b", 36: "#06989a",
           37: "#d3d7cf", 90: "#888a85", 91: "#ef2929", 92: "#8ae234", 93: "#fce94f", 94: "#729fcf", 95: "#ad7fa8",
           96: "#34e2e2", 97: "#eeeeec"}


def render_png(ansi: str, path: Path) -> None:
    """The terminal capture as a picture (black on white, its colours and bold), for a human to look at."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = Path("/usr/share/fonts/truetype/dejavu")
    regular = ImageFont.truetype(str(fonts / "DejaVuSansMono.ttf"), 14)
    bold = ImageFont.truetype(str(fonts / "DejaVuSansMono-Bold.ttf"), 14)
    lines = ansi.rstrip("\n").split("\n")
    cell_w, cell_h = regular.getlength("M"), 18  # a monospace advance
    width = max(len(SGR.sub("", line)) for line in lines) + 2
    image = Image.new("RGB", (round(width * cell_w), (len(lines) + 1) * cell_h), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        column, fg, is_bold, at = 1, "black", False, 0
        for match in [*SGR.finditer(line), None]:
            text = line[at:match.start() if match else len(line)]
            draw.text((column * cell_w, (row + 0.5) * cell_h), text, fill=fg, font=bold if is_bold else regular)
            column += len(text)
            if match is None:
                break
            at = match.end()
            for code in map(int, (match[1] or "0").split(";")):
                if code == 0:
                    fg, is_bold = "black", False
                elif code == 1:
                    is_bold = True
                elif code == 22:
                    is_bold = False
                elif code == 39:
                    fg = "black"
                elif code in PALETTE:
                    fg = PALETTE[code]
    image.save(path)


def test_tables_in_a_terminal_after_a_payment_in_two_coins(bsv_node, ltc_node, daemon_factory, tmp_path):
    """What an operator sees in a terminal (tmux) for a 49.00 USD invoice paid half in BTC, half in LTC: the
    list, the invoice with both methods' own addresses and both payments, its webhook deliveries and the status,
    coloured. Saved under test-artifacts/cli/ (text, ANSI and a picture) for a human to look at."""
    from harness import chain_table

    tmux = shutil.which("tmux")
    assert tmux, "tmux is not installed (Debian package tmux)"
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1) + chain_table("ltc", ltc_node,
                                                                                         confirmations=1))
    config = daemon.config_path
    created = watcherd("invoice", "create", "--currency", "USD", "--amount", "49.00", "--rate", "BTC=50000",
                       "--rate", "LTC=100", "--order-id", "A-1", "--quiet", config=config)
    assert created.returncode == 0, created.stderr
    invoice_id = created.stdout.strip()
    assert watcherd("invoice", "create", "--chain", "btc", "--amount", "0.015", "--order-id", "B-2",
                    config=config).returncode == 0
    btc = json.loads(watcherd("invoice", "pick", invoice_id, "btc", "--json", config=config).stdout)
    btc_address = next(m["address"] for m in btc["payment_methods"] if m["method"] == "btc")
    bsv_node.pay(btc_address, "0.00049")
    daemon.wait_status(invoice_id, "unpaid", where=lambda inv: inv["amount_received"] == "24.50")
    ltc = json.loads(watcherd("invoice", "pick", invoice_id, "ltc", "--json", config=config).stdout)
    ltc_method = next(m for m in ltc["payment_methods"] if m["method"] == "ltc")
    assert ltc_method["due"] == "0.245"
    ltc_node.pay(ltc_method["address"], ltc_method["due"])
    daemon.wait_status(invoice_id, "processing")
    bsv_node.mine(1)
    ltc_node.mine(1)
    daemon.wait_status(invoice_id, "paid")
    wait_for(lambda: len(daemon.api("GET", f"/v1/webhooks?invoice_id={invoice_id}&state=delivered")["deliveries"])
             >= 5, 30, "the invoice's webhooks delivered")

    script = tmp_path / "session.sh"
    done = tmp_path / "done"
    shown = ["invoice list", f"invoice show {invoice_id}", f"webhooks list --invoice {invoice_id}", "status"]
    script.write_text(
        f'watcherd() {{ {sys.executable} -m watcherd --config {config} "$@"; }}\n'
        + "".join(f"echo '$ watcherd {command}'; watcherd {command}; echo\n" for command in shown)
        + f"touch {done}; sleep 120\n")
    socket_path = tmp_path / "tmux.sock"
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    subprocess.run([tmux, "-S", str(socket_path), "new-session", "-d", "-x", "175", "-y", "70", "-c",
                    str(Path(__file__).resolve().parent.parent), f"bash --norc {script}"], check=True, env=env,
                   timeout=30)
    try:
        wait_for(done.exists, 60, "the commands in tmux")
        capture = [tmux, "-S", str(socket_path), "capture-pane", "-p", "-t", "0"]
        plain = subprocess.run(capture, capture_output=True, text=True, check=True, timeout=30).stdout
        ansi = subprocess.run([*capture, "-e"], capture_output=True, text=True, check=True, timeout=30).stdout
    finally:
        subprocess.run([tmux, "-S", str(socket_path), "kill-server"], capture_output=True, timeout=30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "tables.txt").write_text(plain)
    (ARTIFACTS / "tables.ansi").write_text(ansi)
    render_png(ansi, ARTIFACTS / "tables.png")

    assert re.search(rf"^{invoice_id} +paid +49\.00 USD +49\.00 +A-1 +\S+ +0\.00098 BTC, 0\.49 LTC$", plain,
                     re.MULTILINE), plain
    assert re.search(rf"^btc +0\.00098 BTC +0 BTC +50000 USD +1 +{btc_address}$", plain, re.MULTILINE), plain
    assert re.search(rf"^ltc +0\.49 LTC +0 LTC +100 USD +1 +{ltc_method['address']}$", plain, re.MULTILINE), plain
    assert re.search(r"^btc +0\.00049 BTC +24\.50 USD +1/1 +confirmed +\S+ +\w{64}:\d+$", plain, re.MULTILINE), plain
    assert re.search(r"^ltc +0\.245 LTC +24\.50 USD +1/1 +confirmed +\S+ +\w{64}:\d+$", plain, re.MULTILINE), plain
    assert re.search(rf"^evt_\w+ +invoice\.paid +{invoice_id} +webhook +delivered +1 ", plain, re.MULTILINE), plain
    assert "\x1b[1m" in ansi and "\x1b[1m" not in plain  # headers bold, on a terminal only
    assert re.search(r"\x1b\[32m(\x1b\[\d+m)*paid", ansi), ansi  # paid in green
