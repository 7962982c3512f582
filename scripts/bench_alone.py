"""One section of scripts/bench run on its own (`python scripts/bench_<section>.py [--quick]`): its figures as
they come, then each target PASS or FAIL and what could not be measured as BROKEN. Exit status 1 when a target
failed or something broke."""

from __future__ import annotations

import sys
from collections.abc import Callable

Figure = Callable[[str, str], None]
Section = Callable[[bool, Figure], tuple[list[tuple[str, bool]], list[str]]]


def run_alone(section: Section) -> int:
    def show(label: str, value: str) -> None:
        print(f"{label}: {value}", flush=True)

    targets, broken = section("--quick" in sys.argv[1:], show)
    for label, ok in targets:
        show("PASS" if ok else "FAIL", label)
    for problem in broken:
        show("BROKEN", problem)
    return 0 if all(ok for _, ok in targets) and not broken else 1
