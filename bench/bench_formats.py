"""Model-format benchmark: the plain engine's decisions/s per model format against the model's own bound.

On German credit (bench/data, 20 features), one model per format is trained here, saved as a bank ships it
(XGBoost .ubj, LightGBM .txt, scikit-learn via skops, ONNX trees via skl2onnx, a neural ONNX), and loaded
through ``[model] path`` as a worker does. For each, side by side in one run, on the same cores:

- the plain engine (``stability_runs = 1``, no deletion check: lime's work only) explaining N decisions with
  S samples each, in decisions/s;
- the bound: the library's own native predict over the very rows the engine handed the model (recorded in an
  untimed pass: N x S rows), in large calls on the same threads, in decisions/s;
- their ratio (engine / bound; 1.0 = the engine costs nothing beyond the model; target >= 0.8 for XGBoost and
  LightGBM).

    .venv/bin/python bench/bench_formats.py                        # one worker's thread, N=200, S=5000
    .venv/bin/python bench/bench_formats.py --threads 2            # a worker with both cores
    .venv/bin/python bench/bench_formats.py --formats xgboost lightgbm --decisions 400
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import german_data  # noqa: E402

from tasks.engine import BatchedLime, fit_reference  # noqa: E402
from tasks.engine.factory import compile_enabled  # noqa: E402
from tasks.inputs.config import FeatureConfig, ModelConfig  # noqa: E402
from tasks.inputs.model import load_model  # noqa: E402

FORMATS = ("xgboost", "lightgbm", "skops", "onnx-trees", "onnx-mlp")


def german() -> tuple[np.ndarray, np.ndarray, list[FeatureConfig]]:
    """German credit as the model sees it (bench_quality.german_data): rows, target (1 = bad), features."""
    data = german_data()
    return data.x, data.target, data.features


def build(kind: str, x: np.ndarray, y: np.ndarray, folder: Path, threads: int, trees: int = 300
          ) -> tuple[Path, Callable[[np.ndarray], Any], str]:
    """Train and save a model of ``kind``; return its file, the library's own predict on float32 rows, and a
    description. Sizes are those of production credit models (hundreds of trees). The ratio grows with the
    model's cost: the engine's own work per decision is fixed (d, S), the model's grows with its trees."""
    if kind == "xgboost":
        import xgboost as xgb

        model = xgb.XGBClassifier(n_estimators=trees, max_depth=6, learning_rate=0.05, n_jobs=threads).fit(x, y)
        path = folder / "model.ubj"
        model.get_booster().save_model(str(path))
        booster = xgb.Booster(model_file=str(path))
        booster.set_param({"nthread": threads})
        return path, booster.inplace_predict, f"XGBoost {xgb.__version__}, {trees} trees, depth 6"
    if kind == "lightgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(n_estimators=trees, num_leaves=31, learning_rate=0.05, verbose=-1).fit(x, y)
        path = folder / "model.txt"
        model.booster_.save_model(str(path))
        booster = lgb.Booster(model_file=str(path))
        return (path, lambda rows: booster.predict(rows, num_threads=threads),
                f"LightGBM {lgb.__version__}, {trees} trees, 31 leaves")
    if kind == "skops":
        import sklearn
        import skops.io as sio
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        model = HistGradientBoostingClassifier(max_iter=trees, learning_rate=0.05, early_stopping=False).fit(x, y)
        path = folder / "model.skops"
        sio.dump(model, path)

        def predict(rows: np.ndarray) -> np.ndarray:
            with threadpool_limits(threads):
                return model.predict_proba(rows.astype(np.float64))

        return path, predict, f"scikit-learn {sklearn.__version__} HistGradientBoosting, {trees} trees"
    if kind in ("onnx-trees", "onnx-mlp"):
        import onnxruntime as ort

        path = folder / f"{kind}.onnx"
        if kind == "onnx-trees":
            from skl2onnx import to_onnx
            from sklearn.ensemble import GradientBoostingClassifier

            model = GradientBoostingClassifier(n_estimators=trees, max_depth=4, learning_rate=0.05).fit(x, y)
            path.write_bytes(to_onnx(model, x[:1].astype(np.float32), options={"zipmap": False}).SerializeToString())
            what = f"scikit-learn GradientBoosting {trees} trees, depth 4, via skl2onnx"
        else:
            torch.manual_seed(0)
            scale = torch.as_tensor(x.std(0) + 1e-9, dtype=torch.float32)
            network = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                          torch.nn.ReLU(), torch.nn.Linear(64, 2), torch.nn.Softmax(dim=1))

            class Scaled(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.register_buffer("scale", scale)
                    self.network = network

                def forward(self, rows: torch.Tensor) -> torch.Tensor:
                    return self.network(rows / self.scale)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Scaled().eval(), (torch.zeros(2, x.shape[1]),), str(path), input_names=["x"],
                                  output_names=["probabilities"], dynamic_axes={"x": {0: "rows"}}, dynamo=False)
            what = "MLP 64-64 (untrained weights), torch.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        what = f"{what}, onnxruntime {ort.__version__}"
        return path, lambda rows: session.run(["probabilities"], {name: rows})[0], what
    raise ValueError(kind)


class Recording:
    """The loaded model, keeping a copy of every row block the engine hands it (for the bound)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.blocks: list[np.ndarray] = []
        self.on = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.on:
            self.blocks.append(x.detach().cpu().numpy().copy())
        return self._model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1,
                        help="the worker's threads (default 1: [run] torch_threads, one worker per core)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--trees", type=int, default=300, help="trees of each tree model")
    parser.add_argument("--compile", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes each; the fastest counts")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    x, y, features = german()
    stats = fit_reference(x, features)
    n, s = min(args.decisions, len(x)), args.samples
    decisions, ids = x[:n], [f"g{i}" for i in range(n)]
    fused = compile_enabled(args.compile, torch.device("cpu"))
    print(f"German credit (d={len(features)}), N={n}, S={s}, k=3, plain engine (stability_runs = 1, no deletion "
          f"check), {args.threads} threads, torch.compile {'on' if fused else 'off'}; machine shared: ratios are "
          "side by side")
    print(f"{'format':<11} {'engine dec/s':>12} {'bound dec/s':>12} {'ratio':>6}  model")
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.formats:
            path, native, what = build(kind, x, y, Path(folder), args.threads, args.trees)
            trusted = []
            if kind == "skops":  # the bank's review of the types skops does not trust by default
                from skops.io import get_untrusted_types

                trusted = get_untrusted_types(file=path)
            model_config = ModelConfig(path=path, classes=["good", "bad"], explain="bad", trusted=trusted)
            model = load_model(model_config, len(features))
            recording = Recording(model)
            engine = BatchedLime(stats=stats, model=recording, explain_index=1, num_samples=s, seed=1,
                                 compile=fused, stability_runs=1, deletion_check=False)
            engine.explain(decisions, ids)  # warm-up (compiles) and records the rows the model sees
            rows = np.concatenate(recording.blocks)
            assert len(rows) == n * s, (len(rows), n * s)
            recording.blocks, recording.on = [], False  # the timed passes copy nothing
            chunk = model.rows_per_call or len(rows)

            def bound(rows: np.ndarray = rows, chunk: int = chunk, native: Callable = native) -> None:
                for start in range(0, len(rows), chunk):
                    native(rows[start : start + chunk])

            engine_s, bound_s = [], []
            for _ in range(args.repeats):  # alternate, so a busy moment hits both alike
                start = time.perf_counter()
                engine.explain(decisions, ids)
                engine_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                bound()
                bound_s.append(time.perf_counter() - start)
            rate, limit = n / min(engine_s), n / min(bound_s)
            print(f"{kind:<11} {rate:>12.1f} {limit:>12.1f} {rate / limit:>6.2f}  {what} "
                  f"(native predict in calls of {chunk:,} rows)", flush=True)


if __name__ == "__main__":
    main()
