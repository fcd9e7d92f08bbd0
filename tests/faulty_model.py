"""A model entrypoint for fault tests: the real demo model, plus faults keyed on exact decision rows.

``faulty_model:make`` reads the JSON file named by ``LIMELIGHT_TEST_FAULTS``:

* ``model``: the TorchScript file to wrap (the demo credit model);
* ``marker``: a path; while it does not exist, the first call creates it and kills its own process
  (a worker dying mid-shard, once);
* ``kill`` / ``raise`` / ``nan`` / ``badsum``: lists of encoded decision rows; a call whose input holds
  one of them (LIME's first sample of a decision is the decision itself) kills its process, raises,
  returns NaN, or returns rows that do not sum to 1;
* ``slow`` and ``sleep``: the first call of a process whose input holds one of the ``slow`` rows sleeps
  ``sleep`` seconds per such row (a slow model, however often the engine calls it per decision).

Workers import it from ``tests/`` through ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def make() -> Callable[[np.ndarray], np.ndarray]:
    faults = json.loads(Path(os.environ["LIMELIGHT_TEST_FAULTS"]).read_text())
    model = torch.jit.load(faults["model"], map_location="cpu")
    model.eval()
    rows = {kind: np.asarray(faults.get(kind, []), dtype=np.float32).reshape(-1, 12) for kind in
            ("kill", "raise", "nan", "badsum", "slow")}
    marker = faults.get("marker")
    slept: set[bytes] = set()

    def same(x: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """[n, m]: row i of ``x`` equals row j of ``wanted`` (a missing value, NaN, equals NaN)."""
        a, b = x[:, None, :], wanted[None, :, :]
        return ((a == b) | (np.isnan(a) & np.isnan(b))).all(2)

    def hits(x: np.ndarray, kind: str) -> np.ndarray:
        wanted = rows[kind]
        if not len(wanted):
            return np.zeros(len(x), bool)
        return same(x, wanted).any(1)

    def predict(x: np.ndarray) -> np.ndarray:
        if marker and not Path(marker).exists():
            Path(marker).write_text("killed once")
            os._exit(17)
        if hits(x, "kill").any():
            os._exit(18)
        if hits(x, "raise").any():
            raise ValueError("poisoned decision")
        if len(rows["slow"]):
            found = same(x, rows["slow"]).any(0)
            new = {rows["slow"][i].tobytes() for i in np.flatnonzero(found)} - slept
            slept.update(new)
            time.sleep(float(faults["sleep"]) * len(new))
        with torch.inference_mode():
            out = model(torch.as_tensor(x, dtype=torch.float32)).numpy().copy()
        out[hits(x, "nan")] = np.nan
        out[hits(x, "badsum")] = 0.9
        return out

    return predict
