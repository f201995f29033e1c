"""peewee-migrate's own test suite, run with and without the kit's hooks: which failures are the kit's.

    python interop/peewee-migrate/run.py PATH-TO-A-PEEWEE_MIGRATE-CHECKOUT

The suite (the checkout's `tests/`) runs twice against the peewee-migrate installed here: as it is,
then with the kit's hooks installed first (`kit.migrate.pwmigrate.install_hooks`, what `pw_migrate`
runs with in a kit project). A failure of the second run that the first does not have is the kit's:
it is printed and the exit status is 1. Failures of both runs are the suite's own against this
peewee-migrate (the checkout and the installed release need not be the same version) and are listed,
not counted. The commit the kit was last checked against is in CONTRIBUTING.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

PLUGIN = '''
def pytest_configure(config):
    from kit.migrate.pwmigrate import install_hooks

    install_hooks()
'''


def failures(tests: Path, *plugin: str) -> tuple[set[str], int]:
    """The test ids that fail or error in one run of `tests`, and how many tests ran."""
    report = tests.parent / f"report{len(plugin)}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, f"--junitxml={report}",
                    str(tests)], cwd=tests.parent, env=None, timeout=900, capture_output=True, text=True)
    failed, ran = set(), 0
    for case in ET.parse(report).iter("testcase"):
        ran += case.find("skipped") is None
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(f"{case.get('classname')}::{case.get('name')}")
    return failed, ran


def main(argv: list[str]) -> int:
    """Run the suite both ways; 1 if the kit's hooks add a failure."""
    if len(argv) != 1 or not (Path(argv[0]) / "tests").is_dir():
        print("usage: run.py PATH-TO-A-PEEWEE_MIGRATE-CHECKOUT (a directory with tests/)", file=sys.stderr)
        return 2
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copytree(Path(argv[0]) / "tests", work / "tests")  # not the checkout's package: the installed one
        (work / "kit_hooks.py").write_text(PLUGIN)
        plain, ran = failures(work / "tests")
        hooked, ran_hooked = failures(work / "tests", "-p", "kit_hooks")
    print(f"peewee-migrate {version('peewee-migrate')}, peewee {version('peewee')}: {ran} tests ran "
          f"({ran_hooked} with the hooks); {len(plain)} fail without the kit, {len(hooked)} with the kit's hooks")
    for name in sorted(plain):
        print(f"  both runs (the suite's own): {name}")
    kit_only = sorted(hooked - plain)
    for name in kit_only:
        print(f"  KIT ONLY: {name}")
    print(f"{len(kit_only)} kit-only failures")
    return 1 if kit_only else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
