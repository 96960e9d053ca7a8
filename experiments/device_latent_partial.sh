#!/bin/bash
# Latent MPC on the partially observed pendulum, 8 runs at once on a 16-core machine
# (the GPU machine's CPUs; nothing runs on the GPU): filtering and single-step encoders
# for seeds 0, 1, 2 and the filtering encoder with twice the refit steps for seeds 0, 1.
# Every run is killed at RUN_LIMIT seconds; what it finished is kept.
# Usage: OUT=dir bash experiments/device_latent_partial.sh [RUN_LIMIT]
set -u
LIMIT=${1:-540}
RUNS=/tmp/latent_runs
mkdir -p "$RUNS" "$OUT"
export SDL_VIDEODRIVER=dummy MPLBACKEND=Agg PYTHONUNBUFFERED=1
{ lscpu | grep -E "Model name|^CPU\(s\)"; python3 -c "import torch; print('torch', torch.__version__)"; } > "$OUT/machine.txt" 2>&1
P=pendulum-partial-latent-mpc
python3 experiments/parallel_runs.py $P --seeds 0 1 2 \
  --variant filtering model.encoder=filtering latent_mpc.diagnostics_every=5 \
  --variant single_step model.encoder=single_step latent_mpc.diagnostics_every=5 \
  --jobs 6 --threads 2 --timeout "$LIMIT" --out "$RUNS" > "$OUT/main.jsonl" 2>&1 &
python3 experiments/parallel_runs.py $P --seeds 0 1 \
  --variant filtering600 model.encoder=filtering model.train_steps=600 latent_mpc.diagnostics_every=5 \
  --jobs 2 --threads 2 --timeout "$LIMIT" --out "$RUNS" > "$OUT/extra.jsonl" 2>&1 &
wait
cd "$RUNS" && tar czf "$OUT/latent_partial_runs.tgz" --exclude='*.f32' --exclude='checkpoints' .
