"""Nightly deployments of the limelight flow.

Serve a schedule from a long-running process (it needs a real Prefect server, ``PREFECT_API_URL``)::

    python -m flows.deployments config/bank.toml --out '/data/limelight/{date}' --cron '0 2 * * *' \\
        --timezone Europe/London --devices auto

``{date}`` (the run's UTC start date) and ``{run_id}`` in ``--out`` give every night its own folder.
Trigger a run by hand with ``prefect deployment run 'limelight/nightly' --watch``.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.pipeline import limelight_flow

DEFAULT_NAME = "nightly"


def nightly_deployment(
    config: str,
    out: str,
    *,
    cron: str = "0 2 * * *",
    timezone: str = "UTC",
    devices: str | None = None,
    cluster: str | None = None,
    name: str = DEFAULT_NAME,
) -> Any:
    """A ``RunnerDeployment`` of the flow with a cron schedule and fixed parameters."""
    from prefect.schedules import Cron

    parameters: dict[str, Any] = {"config_path": config, "out": out, "mode": "run"}
    if devices:
        parameters["devices"] = devices
    if cluster:
        parameters["cluster"] = cluster
    return limelight_flow.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters,
        tags=["limelight"],
        description="Explain the night's credit decisions and render the customer reports.",
    )


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description="Serve the nightly limelight deployment.")
    parser.add_argument("config")
    parser.add_argument("--out", required=True, help="output folder; may contain {date} and {run_id}")
    parser.add_argument("--cron", default="0 2 * * *")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--devices")
    parser.add_argument("--cluster")
    parser.add_argument("--name", default=DEFAULT_NAME)
    args = parser.parse_args(argv)
    serve(nightly_deployment(args.config, args.out, cron=args.cron, timezone=args.timezone, devices=args.devices,
                             cluster=args.cluster, name=args.name))


if __name__ == "__main__":  # pragma: no cover
    main()
