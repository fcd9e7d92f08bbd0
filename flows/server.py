"""One Prefect server for a run.

Prefect's ephemeral mode starts a server inside every process that talks to the API: with Dask that
is one per worker (30-40 s for a trivial flow, sqlite "database is locked"). So a run always talks
to one real server: ``PREFECT_API_URL`` when it is set (env or profile), otherwise a
``prefect server start`` on loopback that lives exactly as long as the run (free port, its own
PREFECT_HOME in a temporary folder, analytics off, no UI, no scheduler).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

#: Quiet and fast defaults for the CLI, the tests and the server process.
QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


class ServerError(RuntimeError):
    """The Prefect server could not be started."""


def apply_quiet_env(env: dict[str, str] | None = None) -> None:
    """Set the quiet defaults where the user has not chosen (call before importing prefect)."""
    target = os.environ if env is None else env
    for key, value in QUIET_ENV.items():
        target.setdefault(key, value)


def configured_api_url() -> str | None:
    """The API URL the user configured (environment or active profile), if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _template_db() -> Path | None:
    """A migrated, empty server database cached per Prefect version (None: the user chose a database).

    A fresh sqlite database costs ~15 s of migrations on a small machine; a copy of an up-to-date one
    starts in a few seconds (the server still checks and applies any missing migration itself).
    """
    chosen = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
    if any(os.environ.get(name) for name in chosen):
        return None
    from prefect import __version__

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "limelight"
    return cache / f"prefect-{__version__}-server.db"


def _seed_database(home: Path, template: Path | None) -> None:
    if template is not None and template.is_file():
        with contextlib.suppress(OSError):
            shutil.copyfile(template, home / "prefect.db")


def _save_template(home: Path, template: Path | None) -> None:
    """Snapshot the just-started (migrated, still empty) database as the template, atomically."""
    if template is None or template.exists() or not (home / "prefect.db").is_file():
        return
    with contextlib.suppress(OSError, sqlite3.Error):
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f".{template.name}.{os.getpid()}.tmp")
        with contextlib.closing(sqlite3.connect(home / "prefect.db")) as source, \
                contextlib.closing(sqlite3.connect(partial)) as target:
            source.backup(target)
        os.replace(partial, template)


@contextlib.contextmanager
def _started_server(startup_timeout: float) -> Iterator[str]:
    home = Path(tempfile.mkdtemp(prefix="limelight-prefect-"))
    template = _template_db()
    _seed_database(home, template)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    apply_quiet_env(env)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    })
    log = home / "server.log"
    command = [
        sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
        "--no-ui", "--analytics-off", "--no-scheduler", "--no-late-runs",
    ]
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not healthy(url):
            if process.poll() is not None:
                raise ServerError(f"prefect server exited with code {process.returncode}:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"prefect server not healthy after {startup_timeout:.0f} s:\n{_log_tail(log)}")
            time.sleep(0.25)
        _save_template(home, template)
        yield url
    finally:
        _stop(process)
        shutil.rmtree(home, ignore_errors=True)


def _die_with_parent() -> None:
    """In the server's child process (Linux): get SIGTERM when the run's process dies, even by SIGKILL.

    So a killed run never leaves a server behind. (It is the forking thread's death that counts:
    the server is started from the thread that runs the flow.)
    """
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the server's process group (uvicorn and its services), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def drain_prefect_clients() -> None:
    """Send this process's queued logs and events now, while the server still listens.

    (Otherwise they are sent at exit, after a per-run server is gone: "Error logging to API" and a
    long wait on retries.)
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    with contextlib.suppress(Exception):
        run_coro_as_sync(drain())


@contextlib.contextmanager
def use_api(url: str) -> Iterator[str]:
    """Point this process (and the processes it starts) at ``url`` for the duration."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            # Threads started from contexts copied earlier (Prefect's own services) see it too.
            global_context = getattr(prefect.context, "_temporary_global_settings_context", None)
            if global_context is not None:
                stack.enter_context(global_context(prefect.context.get_settings_context()))
            try:
                yield url
            finally:
                drain_prefect_clients()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def prefect_server(startup_timeout: float = 120.0) -> Iterator[str]:
    """Yield the API URL of the one Prefect server this run uses, starting one if none is configured."""
    url = configured_api_url()
    if url:
        with use_api(url):
            yield url
        return
    with _started_server(startup_timeout) as url, use_api(url):
        yield url
