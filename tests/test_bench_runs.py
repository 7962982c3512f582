"""scripts/bench keeps working: its quick mode runs, finds its planted matches and prints its figures."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"


def load_bench():
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    loader = SourceFileLoader("bench", str(BENCH))
    spec = spec_from_loader("bench", loader)
    assert spec is not None
    bench = module_from_spec(spec)
    loader.exec_module(bench)
    return bench


def test_a_full_run_that_misses_a_target_exits_non_zero():
    """A full run's FAIL is a missed target and fails the run (an operator's script or CI sees it); a quick run
    judges no target, only whether every section measured the right thing."""
    exit_status = load_bench().exit_status
    assert exit_status(False, [("a", True), ("b", False)], []) == 1
    assert exit_status(False, [("a", True)], []) == 0
    assert exit_status(True, [("a", True), ("b", False)], []) == 0
    assert exit_status(True, [("a", True)], ["planted matches missing"]) == 1


def test_bench_lag_diagnose_runs_as_the_readme_prints_it():
    """`python scripts/bench_lag.py --diagnose` from a python outside the project's virtualenv: the bench module
    it loads switches to the virtualenv and must come back as bench_lag with its own arguments (it came back as
    the bench, which refused --diagnose)."""
    base_python = getattr(sys, "_base_executable", sys.executable)
    assert Path(sys.prefix).resolve() != Path(base_python).resolve().parent.parent  # really from outside
    done = subprocess.run([base_python, "scripts/bench_lag.py", "--diagnose"], cwd=BENCH.parent.parent,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^lag while both chains are in flight, p50/p99/max ms: [\d.]+, [\d.]+, [\d.]+$", done.stdout,
                     re.MULTILINE), done.stdout
    assert re.search(r"^\d+ callbacks held the loop >= 3 ms; the longest:$", done.stdout, re.MULTILINE), done.stdout


def test_bench_quick_runs_and_reports_scan_tx_throughput():
    """A bench that silently stopped measuring (or stopped running) would mislead every later decision."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^scan_tx throughput \(one core\): [\d,]+ tx/s$", done.stdout, re.MULTILINE), (
        done.stdout
    )
    assert re.search(r"^scan_tx speed-up over python-bitcoinlib: [\d.]+x$", done.stdout, re.MULTILINE)
    assert re.search(r"^scan_block throughput: [\d,]+ tx/s$", done.stdout, re.MULTILINE)
    # the loop-lag section measured both an idle and a busy loop, and judged the busy one
    lag = r"p50 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms \([1-9]\d* wake-ups\)$"
    assert re.search(rf"^loop lag idle \(baseline\): {lag}", done.stdout, re.MULTILINE), done.stdout
    assert re.search(rf"^loop lag while both chains are in flight: {lag}", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^(PASS|FAIL): loop lag p99 <= 10 ms", done.stdout, re.MULTILINE), done.stdout
    # the payment-page section served real pages (a baseline beside them) and heard live changes on open pages
    page_lines = [
        r"page loads baseline: GET /healthz: [\d,]+ req/s",
        r"page loads, full \(HTML \+ CSS \+ JS\): [\d,]+ loads/s",
        r"page full load bytes \(BTC shown\): [\d.]+ kB as transferred",
        r"page external requests: 0 \(",
        rf"live: change committed -> message received, [\d,]+ pages open: {lag.replace('wake-ups', 'changes')}",
        r"live: block committed -> message received, on each of the [\d,]+ pages \(touch_chain\): first [\d.]+ ms",
    ]
    for line in page_lines:
        assert re.search(f"^{line}", done.stdout, re.MULTILINE), (line, done.stdout)
    # no timing in these two: a page that loads something from elsewhere, or grew past 60 kB, fails here
    assert re.search(r"^PASS: page full load <= 60 kB$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^PASS: page makes zero external requests$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^(PASS|FAIL): live change -> page p99 <= 50 ms", done.stdout, re.MULTILINE), done.stdout
    # the write-throughput section created invoices through the real daemon, beside the old path, and heard
    # every invoice's webhook
    for mode in (r"one transaction per request \(max_batch = 1\)", r"group commit \(default\)"):
        assert re.search(rf"^create: {mode}: [\d,]+ invoices/s, p50 [\d.]+ ms, p99 [\d.]+ ms .*the backlog after it at "
                         r"[\d,]+ events/s$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^(PASS|FAIL): webhook delivery >= 1,000 events/s$", done.stdout, re.MULTILINE), done.stdout
    # and the same two modes on a real PostgreSQL, two instances sharing one database, the clients split over both
    for mode in (r"one transaction per request \(max_batch = 1\)", r"group commit \(default\)"):
        assert re.search(rf"^create: PostgreSQL, two instances, {mode}: [\d,]+ invoices/s, p50 [\d.]+ ms, "
                         r"p99 [\d.]+ ms \(32 clients, 16 per instance; .*the backlog after it at [\d,]+ events/s$",
                         done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^(PASS|FAIL): invoice creation >= 1,500/s across two instances on PostgreSQL$", done.stdout,
                     re.MULTILINE), done.stdout
    # the node section ran a real bitcoind and the real daemon: payment -> webhook with and without a background
    # load (its achieved rate printed), and a kill -9 of the instance following the chain taken over by the other
    node = r"p50 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms \([1-9]\d* payments"
    assert re.search(rf"^node: payment sent -> invoice.processing webhook 2xx, idle node \(baseline\): {node}\)$",
                     done.stdout, re.MULTILINE), done.stdout
    assert re.search(rf"^node: payment sent -> invoice.processing webhook 2xx: {node}.*, background load \d+ tx/s "
                     r"measured", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^(PASS|FAIL): detection p99 <= 50 ms under 100 tx/s$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^failover: leader killed -> the other instance processed the next block: [\d.]+ s "
                     r"\(lease_seconds = \d+", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^(PASS|FAIL): failover <= 10 s$", done.stdout, re.MULTILINE), done.stdout
    assert "BROKEN" not in done.stdout
    # and it says what a quick run's FAIL lines mean
    assert re.search(r"^quick run: it checks that every section works; .* Only a full run \(scripts/bench\) judges "
                     r"the targets\.$", done.stdout, re.MULTILINE), done.stdout
