"""The README documents every setting and the Procfile names commands that exist."""

from __future__ import annotations

from pathlib import Path

from app.cli import build_parser
from app.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [var for var in ENV_VARS if f"| `{var}` |" not in table]
    assert missing == []


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["python3 run.py dev", "python3 run.py test"]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "python3 run.py test"


def test_procfile_worker_runs_a_real_subcommand() -> None:
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().strip().splitlines())
    assert procfile["worker"] == "eventflow consume"
    parser = build_parser()
    args = parser.parse_args(procfile["worker"].split()[1:])
    assert callable(args.handler)
    assert "--factory app.web:create_app_from_env" in procfile["web"]
    assert "--port $PORT" in procfile["web"]
