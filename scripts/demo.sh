#!/usr/bin/env bash
# `make demo`: train on the digits sample, serve the model, predict a few test pictures, write a report.
# Everything runs on this machine (in the image when docker and the image are there, else as processes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${DEMO_PORT:-8080}
JOB=demo-$(date +%Y%m%d-%H%M%S)
started=$(date +%s)

"$PY" launch.py data --sample digits
"$PY" launch.py train --local --preset cpu-quick --job-name "$JOB" --hp profile=true  # watched: hook, rules, profiler

"$PY" launch.py deploy --local --model "local_jobs/$JOB/model.tar.gz" --port "$PORT" --detach
trap '"$PY" launch.py delete --local --port "$PORT"' EXIT

# One test picture of each of four classes; the folder name is the true label.
pictures=()
for class in 000.zero 003.three 007.seven 009.nine; do
    picture=$(find "data/digits/test/$class" -name '*.png' | sort | head -1)
    echo "true label of $picture: ${class#*.}"
    pictures+=("$picture")
done
"$PY" launch.py predict --local --port "$PORT" --top-k 3 "${pictures[@]}"

"$PY" launch.py delete --local --port "$PORT"
trap - EXIT
"$PY" launch.py report --local --job "$JOB"

# The figures of this run, on this machine (README quotes the range seen elsewhere).
"$PY" - "local_jobs/$JOB/model/model.json" "$JOB" "$(( $(date +%s) - started ))" <<'PYTHON'
import json, sys
path, job, seconds = sys.argv[1:]
artifact = json.load(open(path))
metrics, int8 = artifact["metrics"], artifact.get("quantization", {})
print(f"\nDemo summary (this machine): job {job}, test accuracy {metrics['test_acc']:.4f} "
      f"(best epoch {metrics['best_epoch']}), {seconds} s after set-up; report: reports/{job}/report.html")
print(f"int8 model: {int8.get('decision', 'none')}: {int8.get('reason', 'no record')}")
PYTHON
