"""Tools only the benchmark needs, installed on first use: a separate venv for the FastAPI and FastStream
baselines, and `redis-benchmark` (Debian's redis-tools) for the server's own XADD figures.

The baselines get a venv of their own, outside the repository, rather than the project's: FastAPI
would bring pydantic, which Litestar picks up as a plugin by itself, and may move starlette's version,
so installing it next to EventFlow would change the app under test and the other engineers' tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ops.bench.report import progress

# What a user would install to write the same thing with these frameworks (uvicorn's "standard" extra
# brings uvloop and httptools, as a production deployment would use).
REQUIREMENTS = ("fastapi", "uvicorn[standard]", "faststream[redis]", "redis", "hiredis")
INSTALL_TIMEOUT_S = 300


@dataclass(frozen=True)
class Tool:
    """A tool found (or installed) for a baseline, or why it is missing (`path` None)."""

    path: str | None
    note: str


def baselines_venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eventflow-bench" / f"baselines-py{sys.version_info.major}.{sys.version_info.minor}"


def baselines_python() -> Tool:
    """The bench-only venv's interpreter, created and filled with REQUIREMENTS on first use."""
    venv = baselines_venv_dir()
    python = venv / "bin" / "python"
    marker = venv / "requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return Tool(str(python), f"bench-only venv {venv}")
    progress(f"first run: installing {', '.join(REQUIREMENTS)} into a bench-only venv at {venv} "
             "(not a project dependency; about 30 s)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120,
                       capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *REQUIREMENTS], check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        return Tool(None, f"could not install the FastAPI/FastStream baselines: {str(detail).strip()[-300:]}")
    marker.write_text(wanted)
    return Tool(str(python), f"bench-only venv {venv} (installed now)")


def package_versions(python: str) -> dict[str, str]:
    """Versions of the baselines' frameworks in the bench-only venv."""
    code = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
            "('fastapi', 'uvicorn', 'pydantic', 'faststream', 'redis', 'hiredis')}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def server_benchmark() -> Tool:
    """`valkey-benchmark` or `redis-benchmark`; when neither is on PATH and this is root on Debian,
    `apt-get install -y redis-tools` (redis-benchmark speaks to Valkey just as well)."""
    for name in ("valkey-benchmark", "redis-benchmark"):
        if found := shutil.which(name):
            return Tool(found, name)
    if found := apt_install("redis-tools", "redis-benchmark", "for redis-benchmark (a benchmark-only tool)"):
        return Tool(found, "redis-benchmark (redis-tools installed now)")
    return Tool(None, "no valkey-benchmark or redis-benchmark on PATH, and apt-get could not install "
                      "redis-tools (Debian: apt-get install redis-tools, as root)")


def apt_install(package: str, binary: str, why: str) -> str | None:
    """Install a Debian package with apt-get when this is root on Debian (a benchmark-only tool);
    the path of `binary` once it is there, else None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    progress(f"installing {package} with apt-get {why}")
    for command in (["apt-get", "install", "-y", "-q", package],
                    ["sh", "-c", f"apt-get update -q && apt-get install -y -q {package}"]):
        try:
            subprocess.run(command, check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.SubprocessError):
            continue
        if found := shutil.which(binary):
            return found
    return None
