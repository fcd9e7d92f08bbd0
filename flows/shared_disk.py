"""An existing cluster's workers must share the run's output folder: checked once, at the start of the run.

Workers write the run's files straight into its staging folder (explanation parts from the device workers,
PDFs from the render workers), and the flow reads them from there; no file travels through Dask. So on a
cluster (``--cluster``) the output folder must be on storage that every worker mounts at the same path, as
Dask on HPC usually has (docs/operations.md, "Shared storage"). Before any work, the flow writes a probe
file into the output folder and every worker connected at that moment must read it back and write one of its
own there, which the flow reads in turn. A worker that cannot is named, by address, in one line
(:class:`~flows.cluster.DeviceError`: exit 2), and the run leaves nothing behind. Workers that join later
are not checked.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path

from flows.cluster import DeviceError
from flows.output import cleanup

#: The probe folder in the output folder, removed again whatever the outcome.
PROBE_PREFIX = ".limelight-shared-"
FLOW_FILE = "flow"


def probe_from_worker(folder: str, token: str) -> str:
    """Run on a worker: ``ok:<file>`` when it reads the flow's probe (``token``) in ``folder`` and wrote
    ``<file>`` next to it, else what went wrong, in words."""
    path = Path(folder)
    try:
        seen = (path / FLOW_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{folder} does not exist there"
    except OSError as error:
        return f"cannot read {folder} ({error.strerror or error})"
    if seen != token:
        return f"{folder} there is another folder of the same name"
    name = f"worker-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        (path / name).write_text(token, encoding="utf-8")
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror or error})"
    return f"ok:{name}"


def check_shared_folder(address: str, folder: Path, created: list[Path], timeout: float = 30.0) -> int:
    """Every worker of the cluster at ``address`` reads and writes ``folder``; returns how many were checked.

    On failure the folders the run created for its output (``created``) are removed again and
    :class:`DeviceError` names the first worker (by address) that does not share the folder.
    """
    from distributed import Client

    token = secrets.token_hex(16)
    probe = folder / f"{PROBE_PREFIX}{token[:12]}"
    try:
        probe.mkdir()
        (probe / FLOW_FILE).write_text(token, encoding="utf-8")
        with Client(address, timeout=timeout, set_as_default=False) as client:
            answers: dict[str, str] = client.run(probe_from_worker, str(probe), token)
        for worker, answer in sorted(answers.items()):
            if answer.startswith("ok:"):
                answer = _read_back(probe / answer[3:], token, folder)
            if answer:
                raise DeviceError(f"--cluster {address}: worker {worker} does not share the output folder: {answer} "
                                  "(every worker must mount it at the same path: docs/operations.md)")
    except DeviceError:
        cleanup(probe, created)
        raise
    except ImportError as error:  # pickled by reference: the workers import limelight's flows package
        cleanup(probe, created)
        raise DeviceError(f"--cluster {address}: a worker cannot import limelight ({error}); install the project "
                          "on every worker") from None
    except (OSError, TimeoutError) as error:
        cleanup(probe, created)
        raise DeviceError(f"--cluster {address}: cannot check that the workers share {folder} ({error})") from None
    shutil.rmtree(probe, ignore_errors=True)
    return len(answers)


def _read_back(path: Path, token: str, folder: Path) -> str:
    """"" when the flow reads what the worker wrote, else the problem in words."""
    try:
        return "" if path.read_text(encoding="utf-8") == token else f"its probe in {folder} differs here"
    except OSError:
        return f"its probe file in {folder} is not visible here"
