#!/usr/bin/env bash
# The CUDA tests and the GPU benchmarks in one run, for a machine with an NVIDIA GPU (CI has none).
#
#   bash bench/gpu_checks.sh            # logs under $OUT (the device tool's folder) or bench/gpu_out/
#
# It installs the studio into the machine's own Python without dependencies (a GPU image brings
# torch, transformers, peft and safetensors; nothing is downloaded), plus any wheels carried in
# .whl/ (bitsandbytes, gguf, filelock, tomli-w: `pip download --no-deps --only-binary=:all: ...`
# here, for the image's Python).  Each step logs to its own file and a failing one does not stop the
# rest, so one lease gives every figure; bench/README.md says what each table means.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --no-deps --no-index -q .whl/*.whl 2>&1 | tail -3
fi
"$PY" -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt" 2>&1

# At most 8 files come back from a lease and one command may run 10 minutes: 7 files, 100 s a step.
step() {  # step NAME COMMAND...: run it with a time limit, log it, go on whatever happens
    local name="$1"; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    timeout "${LIMIT:-100}" "$@" > "$OUT/$name.txt" 2>&1
    echo "   exit $?" | tee -a "$OUT/summary.txt"
}

step cuda_tests "$PY" -m pytest -q -rs -p no:cacheprovider tests/core/test_cuda_paths.py tests/core/test_nf4.py \
    tests/core/test_bnb_4bit.py tests/core/test_variant_qlora.py tests/core/test_training_llm_settings.py
step step_float32 "$PY" bench/bench_training_step.py --device cuda --dtype float32 --models bert,gpt2 --rounds 20
step step_bfloat16 "$PY" bench/bench_training_step.py --device cuda --dtype bfloat16 --models bert,gpt2 --rounds 20
step qlora "$PY" bench/bench_qlora_memory.py --device cuda --width 4096 --layers 8 --batch 256 --steps 20
step memory_estimate "$PY" bench/bench_memory_estimate.py --device cuda --steps 3
