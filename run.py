#!/usr/bin/env python3
"""EventFlow's two commands, for a fresh machine with only Python 3.11+:

    python3 run.py dev     run the whole system locally (web + consumers + embedded Redis)
    python3 run.py test    run the whole test suite

Both create `.venv/` on first use (and refresh it when pyproject.toml changes). Extra arguments are
passed on: `python3 run.py test -k ingest`, `python3 run.py dev --port 9000`. Also:
`python3 run.py bench` (benchmarks) and `python3 run.py eventflow ...` (any CLI command).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".eventflow-installed"


def ensure_env() -> None:
    """Create the virtualenv and install the project with its dev extras when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be started by an older Python
        sys.exit(f"EventFlow needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and (BIN / "eventflow").exists():
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing EventFlow and its dev dependencies into .venv (first run takes a minute) ...",
          flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "-q", "--upgrade", "pip", "setuptools"], check=True)
    subprocess.run([*pip, "-q", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


# Debian packages the test suite uses: Chromium for the dashboard's browser tests (Playwright never
# downloads a browser), promtool to check the alert rules, and redis-cli (client tools only, no
# server) to move a single node's data into a cluster the documented way.
TEST_PACKAGES = {"chromium": "/usr/bin/chromium", "prometheus": "/usr/bin/promtool",
                 "redis-tools": "/usr/bin/redis-cli"}


def ensure_test_packages() -> None:
    """Install the missing Debian packages when we can (root with apt-get); otherwise say what is missing."""
    missing = [pkg for pkg, path in TEST_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get (used by the browser, alert-rule and cluster tests) ...",
              flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return
    print(f"note: {' '.join(missing)} not installed; the tests that need them will fail. Install them with "
          f"`sudo apt-get install {' '.join(missing)}` (Debian/Ubuntu).", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {
        "dev": [str(BIN / "eventflow"), "dev", *rest],
        "test": [str(BIN / "python"), "-m", "pytest", *rest],
        "bench": [str(BIN / "python"), "-m", "ops.bench", *rest],
        "eventflow": [str(BIN / "eventflow"), *rest],
    }
    if command not in commands:
        print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return 2
    ensure_env()
    if command == "test":
        ensure_test_packages()
    os.chdir(ROOT)
    args = commands[command]
    os.execv(args[0], args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
