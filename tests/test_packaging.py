"""What an operator installs: a wheel of the checkout carries every watcherd subpackage and no test kit, and the
installed `watcherd` command works from anywhere, with nothing of the checkout on its path.

Offline on purpose: the wheel is built without build isolation (the backend comes from the project's venv, the
`test` extra pins it), and the fresh venv borrows the project venv's site-packages for the dependencies through
a .pth line (which adds that one directory, without running the .pth files in it, so the editable install of
this checkout stays out).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_TESTKIT = "import sys; assert not [m for m in sys.modules if m.split('.')[0] == 'testkit'], 'testkit imported'"


def clean_env() -> dict[str, str]:
    """The caller's environment minus whatever could put the checkout or another config in play."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "WATCHERD_CONFIG")}


def run(*args, cwd, check=True):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                            timeout=180)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (setuptools writes build/ and *.egg-info into the tree it
    builds; the checkout is not the test's to touch). testkit/ is copied too, so its absence proves something."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            shutil.copy2(entry, source / entry.name)
    for package in ("watcherd", "testkit"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = work / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", dist, source, cwd=work)
    (wheel,) = dist.glob("watcherd-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; dependencies resolve from the project venv's site-packages."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--clear", "--without-pip", venv, cwd=venv)
    purelib = Path(run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                       cwd=venv).stdout.strip())
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "project-dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(dependencies)))
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps",
        "--no-index", built, cwd=venv)
    return venv


def test_wheel_ships_every_watcherd_module_and_no_testkit(built):
    """Package discovery picks up every subpackage (watcherd.core, watcherd.store, watcherd.chains.bitcoin ...):
    a module missing from the wheel would be an ImportError on the operator's machine only."""
    shipped = set(zipfile.ZipFile(built).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "watcherd").rglob("*.py")
                if "__pycache__" not in p.parts}
    assert "watcherd/chains/bitcoin/adapter.py" in shipped
    assert "watcherd/http/static/btcpay.js" in shipped  # package data: the modal checkout script
    assert expected <= shipped, sorted(expected - shipped)
    assert not [name for name in shipped if name.split("/")[0] in ("testkit", "tests")]


def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path, example_config):
    """The installed command checks the example config (its placeholders set) from a directory far from the
    checkout, with --config before or after the command, and runs the installed copy of watcherd, never the
    checkout's."""
    for args in (["--config", example_config, "check-config"], ["check-config", "--config", example_config]):
        result = run(installed / "bin" / "watcherd", *args, cwd=tmp_path)
        assert "OK" in result.stdout
    python = installed / "bin" / "python"
    found = run(python, "-c", f"import watcherd, watcherd.cli, watcherd.daemon; {NO_TESTKIT}; print(watcherd.__file__)",
                cwd=tmp_path).stdout.strip()
    assert Path(found).is_relative_to(installed) and not Path(found).is_relative_to(ROOT), found
    missing = run(python, "-c", "import testkit", cwd=tmp_path, check=False)
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr


def test_the_daemon_never_imports_testkit():
    """In the project venv, where testkit is importable (the checkout is the working directory), the daemon and
    its command line still load none of it: the test kit stays on the tests' side."""
    run(sys.executable, "-c", "import testkit", cwd=ROOT)
    run(sys.executable, "-c", f"import watcherd.daemon, watcherd.cli; {NO_TESTKIT}", cwd=ROOT)
