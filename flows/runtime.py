"""What the flow reads from, and tells, the process and the Prefect run it runs in.

- :func:`scheduled_run_date`: the night a scheduled deployment's run explains when given no ``run_date``
  (read from the Prefect runtime: the flow run's deployment and its cron schedule; flows/deployments.py
  builds that deployment).
- :func:`progress_hook` and :func:`message_hook`: callbacks of the process that runs the flow (the CLI's
  progress bar and its messages, flows/cli.py), fed by the flow's steps through :func:`progress` and
  :func:`say`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from prefect import get_run_logger

#: Progress callbacks of the process that runs the flow (the CLI's progress bar): (stage, done, total).
ProgressHook = Callable[[str, int, int], None]
_HOOKS: list[ProgressHook] = []
#: Messages for the person watching (the deadline estimate), in the process that runs the flow.
MessageHook = Callable[[str], None]
_MESSAGES: list[MessageHook] = []


@contextlib.contextmanager
def _registered(hooks: list[Any], hook: Any) -> Iterator[None]:
    hooks.append(hook)
    try:
        yield
    finally:
        hooks.remove(hook)


def progress_hook(hook: ProgressHook) -> contextlib.AbstractContextManager[None]:
    """Receive (stage, done, total) while a flow runs in this process."""
    return _registered(_HOOKS, hook)


def message_hook(hook: MessageHook) -> contextlib.AbstractContextManager[None]:
    """Receive one-line messages (the deadline estimate) while a flow runs in this process."""
    return _registered(_MESSAGES, hook)


def progress(stage: str, done: int, total: int) -> None:
    for hook in list(_HOOKS):
        hook(stage, done, total)


def say(message: str) -> None:
    """Log ``message`` and pass it to the message hooks."""
    get_run_logger().info(message)
    for hook in list(_MESSAGES):
        hook(message)


def scheduled_run_date() -> str | None:
    """The night a scheduled deployment's run explains when it was given no ``run_date``.

    The day before the run's expected start (its scheduled time; now for a run triggered by hand), in
    the time zone of the deployment's cron schedule. None outside a deployment run, or for a deployment
    without a cron schedule (an ad-hoc run explains what it is given).
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    from tasks.inputs.schedule import previous_day

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None or flow_run.deployment_id is None:
        return None
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(flow_run.deployment_id)
    crons = [s.schedule for s in deployment.schedules or [] if getattr(s.schedule, "cron", None)]
    if not crons:
        return None
    moment = flow_run.expected_start_time or flow_run.start_time or flow_run.created
    assert moment is not None
    return previous_day(moment, crons[0].timezone or "UTC").isoformat()
