"""The demo behind `scripts/demo`: a billing system's view of watcherd on a local devnet of real nodes."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit.devnet import Devnet  # noqa: E402
from testkit.process import free_ports  # noqa: E402
from testkit.receiver import WebhookReceiver  # noqa: E402

STARTED = time.monotonic()


PRINTING = threading.Lock()  # the webhook receiver prints from its own thread


def say(text: str) -> None:
    with PRINTING:
        sys.stdout.write(f"[{time.monotonic() - STARTED:6.1f}s] {text}\n")
        sys.stdout.flush()


def show_event(event: dict[str, Any]) -> None:
    invoice = event["invoice"]
    exception = f" ({invoice['exception']})" if invoice["exception"] else ""
    confirmations = ", ".join(f"{p['confirmations']} conf" for p in invoice["payments"]) or "no payment yet"
    say(f"  webhook {event['type']:<19} {invoice['id']}  {invoice['status'].upper()}{exception}  "
        f"received {invoice['amount_received']}/{invoice['amount']} {invoice['currency']}  [{confirmations}]")


class Api:
    def __init__(self, port: int, token: str):
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.base + path, method=method, data=json.dumps(body).encode() if body else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def wait_status(api: Api, invoice_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        invoice = api("GET", f"/v1/invoices/{invoice_id}")
        if invoice["status"] == status:
            return invoice
        time.sleep(0.1)
    raise SystemExit(f"demo: invoice {invoice_id} did not become {status} within {timeout:.0f}s")


def pay_invoice(api: Api, devnet: Devnet, chain: str, amount: str, confirmations: int, asset: str | None = None,
                pay: Callable[[str], str] | None = None, timeout: float = 60) -> None:
    node = devnet.node(chain)
    body = {"chain": chain, "amount": amount, "order_id": f"DEMO-{(asset or chain).upper()}"}
    if asset:
        body["asset"] = asset
    invoice = api("POST", "/v1/invoices", body)
    say(f"{chain}: invoice {invoice['id']} for {invoice['amount']} {invoice['asset']} is {invoice['status'].upper()}")
    say(f"{chain}: customer is shown  {invoice['payment_uri']}")
    txid = (pay or (lambda address: node.pay(address, amount)))(invoice["address"])
    say(f"{chain}: customer paid, txid {txid}")
    wait_status(api, invoice["id"], "processing", timeout)
    for _ in range(confirmations):
        time.sleep(0.5)
        say(f"{chain}: a block is mined")
        node.mine(1)
    paid = wait_status(api, invoice["id"], "paid", timeout)
    time.sleep(0.5)  # let the last webhook land before printing the ledger line
    payment = paid["payments"][0]
    say(f"{chain}: billing ledger  date={paid['paid_at']}  type=Crypto Payments ({paid['asset']})  "
        f"reference={payment['txid']}  amount={payment['amount']}")


def checkout(api: Api, devnet: Devnet, rates: dict[str, str]) -> None:
    """A USD invoice, as a shop prices it: the customer pays part in BTC and the rest in LTC."""
    invoice = api("POST", "/v1/invoices", {"currency": "USD", "amount": "49.00", "order_id": "DEMO-USD",
                                           "payment_methods": ["btc", "ltc", "eth", "eth:USDC", "xmr"],
                                           "rates": rates})
    offered = ", ".join(f"{m['amount']} {m['asset']}" for m in invoice["payment_methods"])
    say(f"usd: invoice {invoice['id']} for 49.00 USD, offered as {offered}")
    say(f"usd: the customer's payment page  {invoice['checkout_url']}")
    btc = next(m for m in api("POST", f"/v1/invoices/{invoice['id']}/payment-methods/btc")["payment_methods"]
               if m["method"] == "btc")
    half = f"{int(btc['amount_atomic']) // 2 / 10**8:.8f}"
    say(f"usd: customer picks BTC, pays half: {half} BTC to {btc['address']}")
    devnet.node("btc").pay(btc["address"], half)
    time.sleep(1)
    shown = api("POST", f"/v1/invoices/{invoice['id']}/payment-methods/ltc")
    ltc = next(m for m in shown["payment_methods"] if m["method"] == "ltc")
    say(f"usd: {shown['amount_received']} USD received; customer picks LTC for the rest: {ltc['payment_uri']}")
    devnet.node("ltc").pay(ltc["address"], ltc["due"])
    wait_status(api, invoice["id"], "processing")
    for _ in range(2):
        time.sleep(0.5)
        say("usd: a block is mined on each chain")
        devnet.node("btc").mine(1)
        devnet.node("ltc").mine(1)
    paid = wait_status(api, invoice["id"], "paid")
    time.sleep(0.5)
    for payment in paid["payments"]:
        say(f"usd: billing ledger  date={paid['paid_at']}  type=Crypto Payments ({payment['asset']})  "
            f"reference={payment['txid']}  amount={payment['value']} USD ({payment['amount']} {payment['asset']} "
            f"at {payment['rate']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, store)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="watcherd-demo-"))
    devnet = Devnet(workdir / "devnet", die_with_parent=True)
    secret, token = secrets.token_hex(16), secrets.token_hex(16)
    daemon: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        say("starting regtest nodes: bitcoind (ZMQ), litecoind (polled), anvil (websocket, with a test USDC), "
            "monerod (ZMQ blocks, polled pool) with a customer wallet")
        devnet.up(["btc", "ltc", "eth", "xmr"])
        with WebhookReceiver(secret) as receiver:
            receiver.on_event = show_event
            api_port, metrics_port = free_ports(2)
            config = devnet.write_config(
                workdir / "watcherd.toml", store_path=workdir / "watcherd.sqlite3", api_port=api_port,
                api_token=token, webhook_url=receiver.url, webhook_secret=secret, confirmations=2)
            with config.open("a") as f:
                f.write(f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
            log_path = workdir / "watcherd.log"
            with log_path.open("wb") as log:
                daemon = subprocess.Popen([sys.executable, "-m", "watcherd", "--config", str(config), "run"],
                                          stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            api = Api(api_port, token)
            deadline = time.monotonic() + 30
            while True:
                try:
                    api("GET", "/readyz")
                    break
                except OSError:
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"demo: the daemon did not become ready:\n{log_path.read_text()}") from None
                    time.sleep(0.2)
            say(f"watcherd is up: API 127.0.0.1:{api_port}, metrics 127.0.0.1:{metrics_port}, "
                f"webhooks to {receiver.url} (signatures verified)")
            pay_invoice(api, devnet, "btc", "0.015", 2)
            pay_invoice(api, devnet, "ltc", "0.25", 2)
            eth = devnet.node("eth")
            pay_invoice(api, devnet, "eth", "25", 2, asset="USDC",
                        pay=lambda address: eth.pay_token("USDC", address, 25 * 10**6))
            xmr = devnet.node("xmr")
            # monerod's pool is polled (every poll_interval_seconds) and each block is scanned with the view
            # key: allow more time than for the others
            pay_invoice(api, devnet, "xmr", "1.5", 2, pay=lambda address: xmr.pay(address, 15 * 10**11),
                        timeout=180)
            checkout(api, devnet, {"BTC": "50000", "LTC": "80", "ETH": "2500", "USDC": "1", "XMR": "150"})
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                wanted = ("watcherd_processed_height", "watcherd_lag_blocks", "watcherd_invoices{",
                          "watcherd_notifications_delivered_total")
                lines = [line for line in response.read().decode().splitlines() if line.startswith(wanted)]
            say("a few metrics:\n    " + "\n    ".join(lines))
            if receiver.rejected:
                raise SystemExit(f"demo: {receiver.rejected} webhook(s) failed signature verification")
            ok = True
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            say(f"watcherd stopped (exit {daemon.returncode})")
        devnet.down()
        say("nodes stopped")
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"work directory kept: {workdir}")
    say("demo complete: every invoice went UNPAID -> PROCESSING -> PAID")
    say("next, try it by hand (README, \"Try it\"): scripts/devnet up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
