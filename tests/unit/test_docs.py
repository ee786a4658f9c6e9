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


def _section(text: str, heading: str) -> str:
    assert f"\n{heading}\n" in text, heading
    level = heading.split(" ", 1)[0]
    return text.split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]


def test_the_readme_has_the_sections_the_issues_ask_for() -> None:
    readme = (ROOT / "README.md").read_text()
    direct = _section(readme, "## Writing straight into the stream")
    assert "`{eventflow}:events`" in direct and "XADD {eventflow}:events * type" in direct
    durability = _section(readme, "## Durability")
    assert all(f"| `{mode}`" in durability for mode in ("fast", "fsync", "replica"))
    consumers = _section(readme, "## Consumers")
    assert "@consumer(" in consumers and "worker: eventflow consume" in consumers
    assert "eventflow dlq replay" in _section(readme, "## Dead letters and replay")
    for heading in ("## Event types and schemas", "## Retention and archive", "## Observability"):
        _section(readme, heading)
    reliability = _section(readme, "## Reliability")
    assert ("| scenario | load held | faults injected | answers producers saw | acknowledged | lost | duplicated "
            "| unfinished |") in reliability


def test_the_guides_cover_what_the_issues_ask_for() -> None:
    security = (ROOT / "docs" / "security.md").read_text()
    for heading in ("## Assets", "## Actors", "## Trust boundaries", "## Mitigations", "## Reporting a vulnerability"):
        _section(security, heading)
    trust = " ".join(_section(security, "## Trust boundaries").split())
    assert "`XADD` to the stream — is trusted" in trust
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "fly secrets set" in deploy and "REDIS_URL=" in deploy and "fly scale count worker=3" in deploy
    assert "Upstash" in _section(deploy, "## Choosing Redis on Fly")
    capacity = _section((ROOT / "docs" / "scaling.md").read_text(), "## Capacity model")
    assert all(f"| {rate} |" in capacity for rate in ("10k", "100k", "1M"))


def test_the_readme_metrics_table_gives_each_metric_its_labels() -> None:
    from prometheus_client import CollectorRegistry

    from app.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    labels = {}
    # The registry has no public list of its collectors; a labelled metric with no children yet
    # shows no samples (nor labels) in collect().
    for collector, names in registry._collector_to_names.items():
        for name in names:
            labels[name] = tuple(getattr(collector, "_labelnames", ()))
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| metric | labels | what |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in table.strip().splitlines()[1:]]
    checked = 0
    for cells in rows:
        documented = tuple(part.strip("` ") for part in cells[1].split(",") if part.strip())
        for name in (part.strip("` ") for part in cells[0].split(",")):
            if name in labels:
                assert documented == labels[name], name
                checked += 1
    assert checked >= 10
    counted = {name.removesuffix("_total") for cells in rows for name in (p.strip("` ") for p in cells[0].split(","))}
    undocumented = {n for n in labels if not n.endswith(("_created", "_bucket", "_count", "_sum", "_total"))} - counted
    assert undocumented == set()
