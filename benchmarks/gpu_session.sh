#!/usr/bin/env bash
# One GPU session's work, in stages that each fit the device tool's 10-minute command limit:
#
#   bash benchmarks/gpu_session.sh build      # install (builds fastvae._C), environment record
#   bash benchmarks/gpu_session.sh test       # the op suite on the GPU: torch, triton and cuda backends
#   bash benchmarks/gpu_session.sh sanitize   # compute-sanitizer memcheck + racecheck over the cuda tests
#   bash benchmarks/gpu_session.sh bench OPS  # fastvae bench for the given ops (e.g. "vq_nearest vector_quantize")
#   bash benchmarks/gpu_session.sh train      # the large-batch VQ-VAE training benchmark
#
# Everything is written under $OUT (the device tool's output folder; ./gpu-out by default): logs,
# env.txt (GPU, driver, versions, commit, date) and bench folders ready to copy into
# benchmarks/results/<date>-<gpu>/. Nothing here invents a number: every file is program output.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
OP_TESTS=(tests/test_gaussian.py tests/test_iwae.py tests/test_vq.py tests/test_vector_quantizer.py
  tests/test_custom_ops.py tests/test_extension.py tests/test_backend.py tests/test_fuzz.py)

stage="${1:-}"
shift || true
case "$stage" in
  build)
    {
      date -u +%Y-%m-%dT%H:%M:%SZ
      git rev-parse HEAD 2>/dev/null || echo "commit: unknown (no git metadata)"
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
      "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda); print("triton", triton.__version__)'
      nvcc --version | tail -n 2
    } > "$OUT/env.txt" 2>&1
    "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
    rc=$?
    "$PY" -c 'import fastvae; print(fastvae.available_backends())' >> "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
    tail -n 5 "$OUT/build.log"
    exit $rc
    ;;
  test)
    "$PY" -m pytest "${OP_TESTS[@]}" -q -x -p no:cacheprovider -m "not slow" "$@" 2>&1 | tee "$OUT/tests.log" | tail -n 30
    exit "${PIPESTATUS[0]}"
    ;;
  sanitize)
    rc=0
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
        "$PY" -m pytest tests/test_gaussian.py tests/test_iwae.py tests/test_vq.py -q -x -p no:cacheprovider \
        -m "not slow" -k "cuda" "$@" > "$OUT/sanitize-$tool.log" 2>&1 || rc=$?
      echo "$tool: exit $rc"; tail -n 5 "$OUT/sanitize-$tool.log"
    done
    exit $rc
    ;;
  bench)
    name="bench-$(echo "$*" | tr ' ' '-')"
    fastvae bench --ops "$@" --out "$OUT/$name" 2>&1 | tee "$OUT/$name.log" | tail -n 40
    exit "${PIPESTATUS[0]}"
    ;;
  train)
    fastvae bench --training --out "$OUT/bench-training" "$@" 2>&1 | tee "$OUT/bench-training.log" | tail -n 40
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh build|test|sanitize|bench OPS...|train" >&2
    exit 2
    ;;
esac
