#!/usr/bin/env bash
# The GPU path, end to end, on a machine with a CUDA GPU (one prepared run):
#   1. tests/test_gpu.py: training on cuda:0 with bf16 autocast, resume there, CPU export,
#      a Tune search with a GPU per trial;
#   2. `speech-enhance demo` with its default --gpu auto (trains on the GPU);
#   3. a real-recordings build (shared/data/dev, >= 5,000 training patches) when the checkout
#      has it, else the embedded corpus;
#   4. bench/loader_throughput.py on it: the training data path, no model;
#   5. bench/train_throughput.py on it: Ray Train on one GPU against a plain loop on the GPU,
#      at batch 16 and at batch 256 (the GPU-sized step).
# Logs go to $OUT (default /tmp/gpu_check). With .whl/site.tar.xz present (bench/gpu_deps.sh)
# the packages are unpacked from it; otherwise they must be installed.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -f .whl/site.tar.xz ]; then
    mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site
    for wheel in .whl/*.whl; do [ -f "$wheel" ] && python3 -m zipfile -e "$wheel" /tmp/site; done
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, ray, os; print('python', os.sys.version.split()[0], 'torch', torch.__version__,
'ray', ray.__version__, 'cuda', torch.cuda.is_available(), os.cpu_count(), 'CPUs')" | tee -a "$OUT/machine.txt"
status=0
step() {  # step NAME SECONDS COMMAND...: run one step with a time limit, log it, go on after a failure
    local name=$1 limit=$2; shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - started)) s"
    [ $rc -eq 0 ] || { status=1; tail -40 "$OUT/$name.log"; }
}
step test_gpu 300 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py -rA
step demo 240 python3 -m speech_enhance.cli demo --out /tmp/demo
cp /tmp/demo/report/report.md "$OUT/demo_report.md" 2>/dev/null
cp /tmp/demo/run/results.json "$OUT/demo_results.json" 2>/dev/null
DEV=""
for d in shared/data/dev ../shared/data/dev; do [ -d "$d" ] && DEV=$d && break; done
if [ -n "$DEV" ]; then
    step build 120 python3 -m speech_enhance.cli build --clean "$DEV/speech" --noise "$DEV/noise" --out /tmp/gpu_data \
        --noises-per-clean 1
else
    step build 120 bash -c "python3 -m speech_enhance.cli corpus /tmp/gpu_corpus && python3 -m speech_enhance.cli build \
        --clean /tmp/gpu_corpus/speech --noise /tmp/gpu_corpus/noise --out /tmp/gpu_data"
fi
step loader 120 python3 bench/loader_throughput.py --data /tmp/gpu_data --batch-size 16
step train_throughput 200 python3 bench/train_throughput.py --data /tmp/gpu_data --runs ray_1gpu
step train_throughput_b256 200 python3 bench/train_throughput.py --data /tmp/gpu_data --runs ray_1gpu --batch-size 256
grep -E "passed|failed|error" "$OUT/test_gpu.log" | tail -2
grep -E "demo finished|best epoch|use_gpu|training " "$OUT/demo.log"
for log in loader train_throughput train_throughput_b256; do sed -n '/^{/,/^}/p' "$OUT/$log.log"; done
exit $status
