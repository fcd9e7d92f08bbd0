"""Engine benchmark: the batched engine against the reference lime package and a bare forward pass.

Prints, side by side in one run, on the same model (the demo credit model), data, S and k:
- the engine's explanations/s (eager, and fused with torch.compile where a compiler is available),
- the reference lime 0.2.0.1's explanations/s (single process, same threads),
- their ratio, and the engine's time against a bare forward pass of the model over the same rows.

    .venv/bin/python bench/bench_engine.py                       # CPU, all cores
    .venv/bin/python bench/bench_engine.py --device cuda --decisions 50000 --lime-decisions 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.demo import FEATURES, build_demo, default_demo_dir, generate_portfolio, model_inputs  # noqa: E402
from tasks.engine import BatchedLime, fit_reference  # noqa: E402
from tasks.engine.factory import compile_enabled  # noqa: E402
from tasks.engine.reference import LimeReference  # noqa: E402
from tasks.inputs.config import FeatureConfig, ModelConfig  # noqa: E402
from tasks.inputs.model import load_model  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=400, help="decisions the engine explains")
    parser.add_argument("--lime-decisions", type=int, default=20, help="decisions lime explains (0: skip)")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (CPU)")
    parser.add_argument("--memory-mb", type=int, default=1024, help="engine memory budget per chunk")
    parser.add_argument("--compile", choices=["auto", "always", "never"], default="auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    artifacts = build_demo(default_demo_dir().parent / "demo-complete", gaps=False)  # lime cannot sample gaps
    features = [FeatureConfig(**f) for f in FEATURES]
    reference = model_inputs(pd.read_parquet(artifacts.reference)).astype(np.float64)
    portfolio = generate_portfolio(max(args.decisions, args.lime_decisions), seed=99)
    x = model_inputs(portfolio).astype(np.float64)
    ids = portfolio["customer_id"].astype(str).tolist()
    model_config = ModelConfig(path=artifacts.model, classes=["approved", "declined"], explain="declined")
    model = load_model(model_config, len(features), device)
    stats = fit_reference(reference, features)
    n, s = args.decisions, args.samples
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"device {device} ({where}), torch {torch.__version__}, demo model, d={len(features)}, S={s}, "
          f"k={args.top_k}, N={n}")

    modes = [False] + ([True] if compile_enabled(args.compile, device) else [])
    engine_rate: dict[bool, float] = {}
    engine_time: dict[bool, float] = {}
    for fused in modes:
        engine = BatchedLime(stats=stats, model=model, explain_index=1, num_samples=s, top_k=args.top_k,
                             seed=1, memory_budget_mb=args.memory_mb, compile=fused,
                             stability_runs=1, deletion_check=False)  # lime's work only; bench_quality.py: the rest
        warm = timed(lambda e=engine: e.explain(x[: min(n, 256)], ids[: min(n, 256)]), device)
        seconds = timed(lambda e=engine: e.explain(x[:n], ids[:n]), device)
        engine_rate[fused], engine_time[fused] = n / seconds, seconds
        label = "engine (torch.compile)" if fused else "engine (eager)"
        print(f"{label:<24} {n / seconds:>10.1f} explanations/s   ({seconds:.2f} s; warm-up {warm:.1f} s, "
              f"{engine.decisions_per_chunk()} decisions per chunk)")

    # The rows the model sees, already on the device: the bound is the model's own arithmetic, not a copy.
    rows = torch.as_tensor(np.repeat(x[:n], s, axis=0), dtype=torch.float32).to(device)
    step = engine.model_rows or (8192 if device.type == "cpu" else engine.decisions_per_chunk() * s)

    def bare_forward() -> None:
        with torch.inference_mode():
            for start in range(0, len(rows), step):
                model(rows[start : start + step])

    bare_forward()
    forward = timed(bare_forward, device)
    print(f"{'bare forward pass':<24} {n / forward:>10.1f} decisions' rows/s ({forward:.2f} s for {n * s:,} rows"
          f" in calls of {step:,})")
    best = max(engine_rate, key=engine_rate.get)
    print(f"engine time / bare forward: {engine_time[best] / forward:.2f}x (eager {engine_time[False] / forward:.2f}x)")

    if args.lime_decisions:
        m = args.lime_decisions
        lime = LimeReference(stats=stats, model=model, explain_index=1, num_samples=s, top_k=args.top_k, seed=1)
        lime.explain(x[:2], ids[:2])
        seconds = timed(lambda: lime.explain(x[:m], ids[:m]), device)
        print(f"{'reference lime 0.2.0.1':<24} {m / seconds:>10.2f} explanations/s   ({seconds:.2f} s for {m})")
        print(f"speed-up over lime: {engine_rate[best] / (m / seconds):.1f}x "
              f"(eager {engine_rate[False] / (m / seconds):.1f}x); "
              f"lime / bare forward bound: {(seconds / m) / (forward / n):.1f}x")


if __name__ == "__main__":
    main()
