"""Bytes the explain subflow's parameters add to every task it submits, as N grows (no run, no workers).

    PYTHONPATH=. .venv/bin/python bench/task_context.py [--config config/demo.toml] [--sizes 1000,100000,1000000]

Prefect's Dask runner sends each task the serialised context of the flow run that submits it, and that context
holds the flow run's parameters twice: as objects (``FlowRunContext.parameters``) and as the API's JSON copy
(``flow_run.parameters``). The Dask scheduler, which runs in the flow process with a local cluster, deserialises
it and holds it while the task is in flight, and ``dask.tokenize`` walks it at every submit. This prints, per N
(shards of ``--shard-size``), the pickled bytes of both copies for the subflow's parameters as they are
(``plan``: a key, flows/work.py :func:`hand_over`) and as they were (``shards``: the whole list).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import cloudpickle
    from fastapi.encoders import jsonable_encoder
    from pydantic import TypeAdapter

    from tasks.inputs.config import load_config
    from tasks.inputs.sources import SourceFile
    from tasks.plan.shards import Piece, Shard
    from tasks.run.manifest import build_run_info, utc_now

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "demo.toml"))
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--shard-size", type=int, default=256)
    args = parser.parse_args()
    config = load_config(args.config)
    run = build_run_info(config, run_id="x", started=utc_now(), model_sha256="0" * 64, decisions_sha256="0" * 64,
                         reference_sha256="0" * 64)
    adapter = TypeAdapter(dict[str, Any])
    for n in (int(s) for s in args.sizes.split(",")):
        source, size = SourceFile(str(config.data.decisions), n), args.shard_size
        shards = [Shard(i, (Piece(source, i * size, min((i + 1) * size, n)),), i * size) for i in range(-(-n // size))]
        for name, value in (("plan", "0" * 32), ("shards", shards)):
            params = {"config": config, name: value, "run": run, "staging": "/tmp/out/.limelight-staging-x",
                      "render": True, "workers": 2, "deadline": None, "best_effort": False, "render_resource": True,
                      "render_batch": 32, "render_workers": 1, "devices_render": True}
            objects = len(cloudpickle.dumps(adapter.dump_python(params)))
            api = len(cloudpickle.dumps(jsonable_encoder(params)))
            print(f"{n:>9,} decisions, {len(shards):>5,} shards, parameter {name:>6}: {objects + api:>9,} B per task "
                  f"({objects:,} objects + {api:,} the flow run's JSON)", flush=True)


if __name__ == "__main__":
    main()
