#!/bin/bash
# Does a run killed under an older commit resume under this checkout, to the same bytes?
#
#   .ci/resume_across_commits.sh OLD_COMMIT        (from the repository root, after `make setup`)
#
# Starts the demo (150 decisions, one CPU worker) with OLD_COMMIT's code, kills it with SIGKILL after its first
# report batch, then reruns the same command with this checkout's code (the resume), and beside it a fresh run of
# this checkout that gets only the killed run's state file. Prints what was reused and whether every output is
# byte-identical. The old code runs from a temporary git worktree; both use this checkout's .venv and demo files.
set -euo pipefail
OLD_COMMIT=${1:?usage: $0 OLD_COMMIT}
NEW=$(pwd)
PY=$NEW/.venv/bin/python
WORK=$(mktemp -d)
OLD=$WORK/old
trap 'git worktree remove --force "$OLD" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q --detach "$OLD" "$OLD_COMMIT"
PYTHONPATH=$NEW $PY -c "from tasks.demo import build_demo; build_demo()" >/dev/null
# the old commit's demo config (its bytes are part of the run's identity), reading this checkout's demo files
sed "s#\.\./\.cache/demo#$NEW/.cache/demo#" "$OLD/config/demo.toml" > "$WORK/demo.toml"
export PREFECT_LOGGING_LEVEL=WARNING
run() { (cd "$1" && PYTHONPATH=$1 $PY -m flows.cli run "$WORK/demo.toml" --out "$2" --devices cpu:1 --limit 150); }

(cd "$OLD" && PYTHONPATH=$OLD setsid $PY -m flows.cli run "$WORK/demo.toml" --out "$WORK/killed" --devices cpu:1 \
  --limit 150) > "$WORK/killed.log" 2>&1 &
PID=$!  # setsid: the old CLI, its Prefect server and its workers are one process group, killed together
until ls "$WORK"/killed/.limelight-staging-*/records/render-*.json >/dev/null 2>&1; do
  kill -0 $PID 2>/dev/null || { tail -20 "$WORK/killed.log"; exit 1; }
  sleep 0.1
done
PGID=$(ps -o pgid= -p "$(pgrep -f -n "$WORK/demo.toml")" | tr -d ' ')
kill -KILL -- "-$PGID" 2>/dev/null || true
wait $PID 2>/dev/null || true
STAGING=$(ls -d "$WORK"/killed/.limelight-staging-*)
echo "killed under $OLD_COMMIT with records: $(ls "$STAGING/records" | tr '\n' ' ')"
mkdir -p "$WORK/fresh/$(basename "$STAGING")"
cp "$STAGING/state.json" "$WORK/fresh/$(basename "$STAGING")/"
run "$NEW" "$WORK/killed" > "$WORK/resumed.log" 2>&1 || { tail -20 "$WORK/resumed.log"; exit 1; }
run "$NEW" "$WORK/fresh" > "$WORK/fresh.log" 2>&1 || { tail -20 "$WORK/fresh.log"; exit 1; }
$PY - "$WORK" <<'PY'
import json, pathlib, sys
import pyarrow.parquet as pq
root = pathlib.Path(sys.argv[1])
resumed, fresh = (json.loads((root / name / "manifest.json").read_text()) for name in ("killed", "fresh"))
print("resumed:", resumed["resumed"], "| same run id as the fresh run:", resumed["run_id"] == fresh["run_id"])
same = all((root / "killed" / n).read_bytes() == (root / "fresh" / n).read_bytes()
           for n in ("explanations.parquet", "summary.pdf", "failures.parquet", "reports.parquet"))
entries = pq.read_table(root / "killed" / "reports.parquet").to_pylist()
reports = sum((root / "killed" / e["file"]).read_bytes() == (root / "fresh" / e["file"]).read_bytes() for e in entries)
print(f"explanations, summary, failures, index identical: {same}; reports identical: {reports}/{len(entries)}")
sys.exit(0 if same and reports == len(entries) and resumed["resumed"]["shards_reused"] > 0 else 1)
PY
