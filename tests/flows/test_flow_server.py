"""flows/server.py: one Prefect server per run (configured, or started and stopped with the run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flows.server import configured_api_url, free_port, healthy, prefect_server

pytestmark = pytest.mark.slow


def test_a_configured_server_is_used_as_is(prefect_api):
    assert configured_api_url() == prefect_api
    with prefect_server() as url:
        assert url == prefect_api and healthy(url)


def test_the_run_server_dies_with_its_process(tmp_path):
    """Even a SIGKILLed run leaves no server behind (and a normal exit stops it: see test_cli)."""
    code = "from flows.server import prefect_server\nwith prefect_server() as url:\n    print(url, flush=True)\n" \
           "    import time; time.sleep(600)\n"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    env["TMPDIR"] = str(tmp_path)  # the server's folder, which a killed run cannot remove, lands here
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and healthy(url)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while healthy(url, timeout=1) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not healthy(url, timeout=1)


def test_health_of_nothing():
    assert not healthy(f"http://127.0.0.1:{free_port()}/api", timeout=1)
