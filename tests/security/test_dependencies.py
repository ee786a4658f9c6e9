"""Known vulnerabilities in the installed environment (what `pip install -e .[dev]` resolved: the
project has no lock file, so the environment CI builds is what gets audited).

pip-audit asks a vulnerability database over the network (PyPI's per-release JSON API by default, or
OSV). Where neither answers (this sandbox reaches PyPI's package pages and its per-project JSON, not
the per-release JSON or OSV), an equal check takes over: PyPI's per-project JSON lists the known
vulnerabilities of the project's latest release, so every installed distribution that *is* its
latest release is audited that way. Distributions pinned below their latest release cannot be
audited by it; they are named in the output, and the test fails if they are runtime dependencies.
The test fails on any vulnerability found, and skips only when no database at all answers.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import subprocess
import sys
import urllib.request

import pytest

TIMEOUT_S = 120
RUNTIME = {"litestar", "msgspec", "granian", "redis", "hiredis", "jinja2", "prometheus-client", "argon2-cffi",
           "jsonschema-rs", "httpx", "swagger-ui-py"}  # what production runs; the others are dev and test tools


def pip_audit() -> dict[str, object] | None:
    cmd = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off", "--skip-editable"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        report: dict[str, object] = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return None
    return report


def latest_release(name: str) -> tuple[str, str | None, list[dict[str, object]]]:
    """(name, its latest version on PyPI or None if PyPI did not answer, that release's vulnerabilities)."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=15) as resp:
            project = json.load(resp)
    except (OSError, ValueError):
        return name, None, []
    return name, project["info"]["version"], project.get("vulnerabilities") or []


def installed() -> dict[str, str]:
    names = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in importlib.metadata.distributions()}
    names.pop("eventflow", None)
    return names


@pytest.mark.timeout(TIMEOUT_S + 90)
def test_no_installed_dependency_has_a_known_vulnerability() -> None:
    report = pip_audit()
    dependencies = [d for d in (report or {}).get("dependencies", []) if isinstance(d, dict)]  # type: ignore[attr-defined]
    audited = [d for d in dependencies if "skip_reason" not in d]
    if audited:
        vulnerable = {f"{d['name']} {d['version']}": [v["id"] for v in d["vulns"]] for d in audited if d.get("vulns")}
        assert not vulnerable, f"known vulnerabilities (pip-audit): {vulnerable}"
        return
    versions = installed()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(latest_release, versions))
    if all(latest is None for _, latest, _ in answers):
        pytest.skip("no vulnerability database answered: neither pip-audit's nor PyPI's project JSON")
    current = {name: vulns for name, latest, vulns in answers if latest == versions[name]}
    vulnerable = {f"{n} {versions[n]}": [str(v.get("id")) for v in vulns] for n, vulns in current.items() if vulns}
    assert not vulnerable, f"known vulnerabilities (PyPI): {vulnerable}"
    behind = {n: (versions[n], latest) for n, latest, _ in answers if n not in current}
    print(f"audited {len(current)} of {len(versions)} installed distributions against PyPI's advisories; "
          f"not audited (pinned below their latest release, or PyPI did not answer): {behind}")
    assert not set(behind) & RUNTIME, f"runtime dependencies that could not be audited: {behind}"
