"""Procfile, fly.toml and Dockerfile agree: process names and commands, ports, health path, shutdown.

The Dockerfile cannot be built here (no Docker engine), so it is checked statically: stages, user,
entrypoint, command, ports and the files it copies.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.devstack import web_command
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().strip().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def parses_as_eventflow_command(command: str) -> bool:
    argv = shlex.split(command)
    assert argv[0] == "eventflow", command
    return callable(build_parser().parse_args(argv[1:]).handler)


def test_fly_runs_the_procfiles_processes() -> None:
    assert set(fly()["processes"]) == set(procfile()) == {"web", "worker"}


def test_the_worker_command_is_the_same_everywhere_and_exists() -> None:
    assert fly()["processes"]["worker"] == procfile()["worker"] == "eventflow consume"
    assert parses_as_eventflow_command(procfile()["worker"])


def test_the_web_command_on_fly_runs_exactly_the_procfiles_granian_line() -> None:
    # Fly does not expand $PORT in a process command, so fly.toml runs `eventflow serve`, which execs
    # web_command() with PORT and EVENTFLOW_WEB_WORKERS read from the environment: the Procfile's line.
    assert fly()["processes"]["web"] == "eventflow serve"
    assert parses_as_eventflow_command(fly()["processes"]["web"])
    procfile_argv = shlex.split(procfile()["web"].replace("${EVENTFLOW_WEB_WORKERS:-1}", "WORKERS"))
    assert procfile_argv == web_command("0.0.0.0", "$PORT", "WORKERS")  # type: ignore[arg-type]
    assert procfile_argv[0] == "granian"
    assert procfile_argv[procfile_argv.index("--interface") + 1] == "asgi"
    serve = build_parser().parse_args(["serve"])
    assert serve.host == "0.0.0.0"


def test_the_dockerfile_starts_the_web_process_by_default() -> None:
    cmd = [c for w, c in final_stage() if w == "CMD"]
    assert cmd and shlex.split(cmd[-1].strip("[]").replace(",", " ")) == ["eventflow", "serve"]


def test_ports_agree() -> None:
    config = fly()
    env = docker_env()
    port = int(config["env"]["PORT"])
    assert config["http_service"]["internal_port"] == port == int(env["PORT"])
    metrics = {tuple(m["processes"]): m["port"] for m in config["metrics"]}
    assert metrics[("web",)] == int(config["env"]["EVENTFLOW_METRICS_PORT"]) == int(env["EVENTFLOW_METRICS_PORT"])
    assert metrics[("worker",)] == int(config["env"]["EVENTFLOW_WORKER_METRICS_PORT"]) \
        == int(env["EVENTFLOW_WORKER_METRICS_PORT"])
    exposed = {int(p) for w, rest in final_stage() if w == "EXPOSE" for p in rest.split()}
    assert {port, *metrics.values()} <= exposed
    assert all(m["path"] == "/metrics" for m in config["metrics"])


def test_the_health_check_is_readyz_on_the_web_service() -> None:
    service = fly()["http_service"]
    checks = service["checks"]
    assert [c["path"] for c in checks] == ["/readyz"]
    assert all(c["method"] == "GET" for c in checks)
    from app.web.health import ROUTES

    assert "/readyz" in {path for route in ROUTES for path in route.paths}


def test_workers_are_never_auto_stopped() -> None:
    config = fly()
    # Only the web group is behind the proxy (which does the auto-stopping); workers have no service.
    assert config["http_service"]["processes"] == ["web"]
    assert not any("worker" in s.get("processes", ["web", "worker"]) for s in config.get("services", []))
    assert config["http_service"]["auto_stop_machines"] in ("off", False)
    assert config["http_service"]["min_machines_running"] >= 1


def test_the_kill_timeout_outlasts_the_workers_shutdown_grace() -> None:
    config = fly()
    kill_timeout_s = float(str(config["kill_timeout"]).rstrip("s"))
    assert kill_timeout_s > Settings().shutdown_grace_s + 5  # + time to close connections and flush
    assert config["kill_signal"] in ("SIGTERM", "SIGINT")


def test_the_dockerfile_is_multi_stage_slim_and_runs_as_a_non_root_user() -> None:
    froms = [rest for word, rest in dockerfile() if word == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f.upper() for f in froms)
    assert "slim" in final_stage()[0][1]
    users = [rest for word, rest in final_stage() if word == "USER"]
    entrypoint = [rest for word, rest in final_stage() if word == "ENTRYPOINT"]
    if users:
        assert users[-1] not in ("root", "0")
    else:  # the entrypoint drops to the unprivileged user before running anything
        script = ROOT / entrypoint[-1].strip('[]"').removeprefix("/app/")
        text = script.read_text()
        assert re.search(r"exec setpriv --reuid=10001 --regid=10001 --clear-groups -- \"\$@\"", text)
        assert text.count('exec "$@"') == 1  # the only other way out: already not root
        assert any("useradd" in rest and "--uid 10001" in rest for w, rest in final_stage() if w == "RUN")


def test_the_dockerfile_copies_files_that_exist_and_dockerignore_keeps_them() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for word, rest in dockerfile():
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source not in ignored and source.split("/")[0] not in ignored, source
    assert {".venv", ".git", ".eventflow", "tests"} <= set(ignored)


def test_the_image_needs_no_dev_or_embedded_extras() -> None:
    installs = [rest for word, rest in dockerfile() if word == "RUN" and "pip install" in rest]
    assert installs and not any("[dev" in r or "embedded" in r for r in installs)


@pytest.mark.parametrize("name", ["PROMETHEUS_MULTIPROC_DIR", "EVENTFLOW_METRICS_PORT", "PORT"])
def test_fly_and_the_image_set_the_same_observability_env(name: str) -> None:
    assert fly()["env"][name] == docker_env()[name]


@pytest.mark.parametrize("name", ["EVENTFLOW_AUDIT_PATH", "EVENTFLOW_ARCHIVE_PATH", "EVENTFLOW_DATA_DIR"])
def test_what_the_worker_writes_lands_on_its_volume(name: str) -> None:
    # The image's working directory belongs to root; the worker (uid 10001) can write the volume only.
    [mount] = [fly()["mounts"]] if isinstance(fly()["mounts"], dict) else fly()["mounts"]
    assert "worker" in mount["processes"]
    assert Path(docker_env()[name]).is_relative_to(mount["destination"])


def test_the_commands_the_files_name_are_installed_entry_points() -> None:
    # Procfile, fly.toml and the Dockerfile run `eventflow ...` and `granian`: the console script is
    # declared by the package, and granian is one of its dependencies.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["eventflow"] == "app.cli:main"
    assert any(re.match(r"granian\b", dep) for dep in project["dependencies"])


def test_ci_runs_the_readme_test_command_and_deploys_main_to_fly_with_a_token_secret() -> None:
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    test_steps = [step.get("run", "") for step in jobs["test"]["steps"]]
    assert "python3 run.py test" in test_steps
    deploy = jobs["deploy"]
    assert deploy["needs"] == "test" and "refs/heads/main" in deploy["if"]
    [step] = [step for step in deploy["steps"] if "deploy" in step.get("run", "")]
    assert re.match(r"(fly|flyctl) deploy\b", step["run"])
    assert step["env"]["FLY_API_TOKEN"] == "${{ secrets.FLY_API_TOKEN }}"
