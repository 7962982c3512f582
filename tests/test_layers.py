"""The layer rules (README, "Layout") hold, and the check that enforces them can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_layer_rules_hold() -> None:
    """core imports nothing of watcherd, store only core, the ledger no chain, chain kinds not each other nor
    the ledger/store/daemon, only the daemon wires, and the shipped package never imports the test kit."""
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_chain_importing_the_ledger_is_refused(tmp_path: Path) -> None:
    """Adding `from watcherd.ledger import Processor` to a chain module breaks the build: the rule is real."""
    shutil.copytree(ROOT / "watcherd", tmp_path / "watcherd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "testkit", tmp_path / "testkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    adapter = tmp_path / "watcherd" / "chains" / "bitcoin" / "adapter.py"
    adapter.write_text(adapter.read_text() + "\nfrom watcherd.ledger import Processor  # noqa: E402,F401\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "chains talk to the core only through ChainSink BROKEN" in done.stdout
    assert "watcherd.chains.bitcoin.adapter -> watcherd.ledger" in done.stdout
