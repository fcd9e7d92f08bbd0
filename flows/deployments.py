"""The nightly deployment of the limelight flow, defined once in ``prefect.yaml`` at the repository root.

``limelight serve`` (flows/cli.py) builds it from that file, with command-line overrides, and serves it
from a long-running process; ``prefect deploy --name nightly`` registers the same definition for a work
pool. Operators trigger a night by hand with ``prefect deployment run 'limelight/nightly' -p
run_date=2026-11-20``.

A nightly run without ``run_date`` explains the day before its scheduled start in the schedule's time zone
(``scheduled_run_date`` in flows/runtime.py, called by the flow), so a run started late still explains its
own night. Imports go one way only, from here to the flow (flows/pipeline.py, imported lazily: building
a deployment is the only use of it here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "prefect.yaml"
DEFAULT_NAME = "nightly"
FLOW_NAME = "limelight"


@dataclass(frozen=True)
class NightlySpec:
    """One deployment of prefect.yaml: its cron schedule and the flow's parameters."""

    name: str
    cron: str
    timezone: str
    parameters: dict[str, Any]
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    concurrency_limit: int | None = None


def read_spec(name: str = DEFAULT_NAME, path: Path = PREFECT_YAML) -> NightlySpec:
    """The deployment ``name`` of a prefect.yaml; relative paths in its parameters resolve against its folder."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not readable YAML ({str(error).splitlines()[0]})") from None
    entries = {d.get("name"): d for d in document.get("deployments") or [] if isinstance(d, dict)}
    if name not in entries:
        raise ConfigError(f"{path}: deployments: no deployment named {name!r} (found: {', '.join(map(str, entries))})")
    entry = entries[name]
    crons = [s for s in entry.get("schedules") or [] if isinstance(s, dict) and s.get("cron")]
    if not crons:
        raise ConfigError(f"{path}: deployments.{name}.schedules: needs a cron schedule")
    parameters = dict(entry.get("parameters") or {})
    for key in ("config_path", "out"):
        if parameters.get(key):
            parameters[key] = str((path.parent / str(parameters[key])).resolve())
    return NightlySpec(
        name=name,
        cron=str(crons[0]["cron"]),
        timezone=str(crons[0].get("timezone") or "UTC"),
        parameters=parameters,
        description=entry.get("description"),
        tags=list(entry.get("tags") or []),
        concurrency_limit=entry.get("concurrency_limit"),
    )


def nightly_deployment(
    config: str | Path | None = None,
    out: str | None = None,
    *,
    cron: str | None = None,
    timezone: str | None = None,
    devices: str | None = None,
    cluster: str | None = None,
    name: str | None = None,
    spec: str = DEFAULT_NAME,
    spec_path: Path = PREFECT_YAML,
) -> Any:
    """A ``RunnerDeployment`` of the flow: prefect.yaml's deployment ``spec``, overridden where given.

    ``name`` renames the deployment (default: ``spec``), e.g. to serve a second schedule beside the first.

    ``out`` may contain ``{date}`` (the run's run_date) and ``{run_id}``; paths given here resolve
    against the current folder, so the served runs find them whatever their working directory.
    """
    from prefect.schedules import Cron

    from flows.pipeline import limelight_flow
    from tasks.inputs.schedule import zone

    entry = read_spec(spec, spec_path)
    name = name or entry.name
    parameters = dict(entry.parameters)
    if config is not None:
        parameters["config_path"] = str(Path(config).expanduser().resolve())
    if out is not None:
        parameters["out"] = str(Path(out).expanduser().resolve())
    for key, value in (("devices", devices), ("cluster", cluster)):
        if value:
            parameters[key] = value
    if "config_path" not in parameters or "out" not in parameters:
        raise ConfigError(f"{spec_path}: deployments.{entry.name}.parameters: needs config_path and out")
    parameters.update({"mode": "run", "trigger": "nightly", "started_by": f"deployment {FLOW_NAME}/{name}"})
    timezone = timezone or entry.timezone
    zone(timezone)
    try:
        schedule = Cron(cron or entry.cron, timezone=timezone)
    except ValueError as error:
        raise ConfigError(f"cron {cron or entry.cron!r}: {str(error).splitlines()[0]}") from None
    return limelight_flow.to_deployment(
        name=name,
        schedules=[schedule],
        parameters=parameters,
        tags=entry.tags,
        description=entry.description,
        concurrency_limit=entry.concurrency_limit,
    )

