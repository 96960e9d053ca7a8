#!/bin/bash
# Issue 18's GPU measurements in one short script (run it when a GPU is lent; at most 6 min
# per stage, so that a 15-minute device budget leaves room to rerun one):
#   1. the device tests (tests/test_devices.py: fit/predict on the GPU as on the CPU, a GPU
#      run repeating bit for bit and resuming on the CPU; tests/test_graphs.py: plans
#      recorded as CUDA graphs equal the eager plans, runs with and without graphs agree);
#   2. planning throughput at the planning_throughput workload on the GPU, fp32/tf32/bf16,
#      eager and replayed as a CUDA graph;
#   3. the whole default run on the GPU, seed 0, with CUDA graphs and eager (wall time,
#      planning and fitting apart, GPU peak memory, returns of episodes 4-8);
#   stage "seeds": the default run with CUDA graphs, seeds 1 and 2 (the returns bar).
# Usage: here, `bash experiments/device_wheels.sh` (the packages the GPU image lacks, into
# .whl/), then on the device machine, with carry [".whl"]:
#   OUT=dir bash experiments/device_check.sh          (stage 1-3, results under $OUT)
#   OUT=dir bash experiments/device_check.sh seeds    (seeds 1 and 2)
set -u
mkdir -p "$OUT"
export SDL_VIDEODRIVER=dummy MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/wheels.txt" 2>&1 || { cat "$OUT/wheels.txt"; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site
fi
# fail fast (and cheaply) when a package is missing or the image's torch is too old
python3 -c "import torch, bayes_mbrl.cli, bayes_mbrl.experiment, bayes_mbrl.uncertainty; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  > "$OUT/import.txt" 2>&1 || { cat "$OUT/import.txt"; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total --format=csv; lscpu | grep -E "Model name|^CPU\(s\)";
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/machine.txt" 2>&1
if [ "${1:-main}" = seeds ]; then
  timeout 300 python3 experiments/benchmarks/whole_run.py --seeds 1 2 --set experiment.device=cuda \
    --out "$OUT/whole_run_cuda_seeds12.json" > "$OUT/whole_run_seeds12.txt" 2>&1
  tail -n 4 "$OUT"/whole_run_seeds12.txt
  exit 0
fi
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_graphs.py \
  > "$OUT/tests.txt" 2>&1
timeout 90 python3 experiments/benchmarks/planning_throughput.py --device cuda --cuda-graphs \
  --precision float32 tf32 bfloat16 --repeats 10 > "$OUT/planning_throughput.txt" 2>&1
timeout 90 python3 experiments/benchmarks/whole_run.py --seeds 0 --set experiment.device=cuda \
  --out "$OUT/whole_run_cuda.json" > "$OUT/whole_run.txt" 2>&1
timeout 90 python3 experiments/benchmarks/whole_run.py --seeds 0 --set experiment.device=cuda \
  --set planner.cuda_graphs=false --out "$OUT/whole_run_cuda_eager.json" > "$OUT/whole_run_eager.txt" 2>&1
tail -n 3 "$OUT"/*.txt
