#!/usr/bin/env bash
# The GPU proof: one command that builds, checks and times fastvae on a bare H100 or H200 within a
# 9-minute deadline, writing everything under $OUT (the device tool's output folder).
#
#   bash benchmarks/gpu_proof.sh                       # the proof (first call of a GPU loan)
#   bash benchmarks/gpu_proof.sh --rerun DIR/tests.xml # second call: the failed tests of that run with
#                                                      # full tracebacks, then every stage it skipped
#                                                      # (read from DIR/proof.json beside it)
#   bash benchmarks/gpu_proof.sh --rehearse            # CI: every stage's commands at tiny sizes on the
#                                                      # CPU; what needs a GPU says "skipped: no GPU"
#                                                      # (with --rerun too: rehearses the second call)
#
# Stages, in order of priority; each runs under `timeout` with its own budget, cut to what is left
# of the deadline, and a stage that cannot finish (or cannot start for lack of time) is recorded as
# skipped with the reason, never dropped:
#   env        GPU, driver, CUDA, versions, commit, date                      -> env.txt
#   build      pip install with FASTVAE_CUDA_ARCHS=90a (ninja: every core); on failure again with
#              FASTVAE_NO_CUDA=1, so the Triton stages still run
#   smoke      every op forward and backward, fp32 and bf16, triton and cuda, poisoned outputs,
#              error against float64 (benchmarks/gpu_smoke.py)
#   tests      the op test suite on the GPU (pytest -n, slow tests excluded, per-test timeout, JUnit)
#              and, beside it, compute-sanitizer memcheck over ~40 cuda tests (benchmarks/gpu_proof.py)
#   bench      `fastvae bench`: the core set against eager, torch.compile and the measured ceilings
#   racecheck  compute-sanitizer racecheck over ~8 VQ and IWAE cuda tests
#   slow       the slow tests (past 2^31 elements, N = 2^20)
#   training   the large-batch VQ-VAE training benchmark, batch range capped
#   quantisers peak memory and time of FSQ, LFQ (D = 16) and ResidualVQ (Q = 8, K = 1,024, D = 128)
#              forward + backward at N = 2^20 (`fastvae bench --peer`; the peer's rows say "not
#              installed" where vector-quantize-pytorch is absent, fastvae's are measured)
# The summary table is printed last. Result files (at most 8, flat under $OUT): env.txt, proof.json
# (stages, smoke rows, test counts, sanitizer verdicts, training and quantiser rows), summary.md, stages.log (each
# stage's command, exit status and output tail; the build log's tail), tests.xml (JUnit of the op
# suite and slow tests, or of the rerun), sanitizer.log, bench.json, bench.md.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=proof
REHEARSE=0
RERUN_XML=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1; shift ;;
    --rerun)
      MODE=rerun
      RERUN_XML="${2:-}"
      if [ -z "$RERUN_XML" ] || [ ! -f "$RERUN_XML" ]; then
        echo "gpu_proof: --rerun needs the JUnit XML of an earlier proof (got '${RERUN_XML}')" >&2
        exit 2
      fi
      RERUN_XML="$(cd "$(dirname "$RERUN_XML")" && pwd)/$(basename "$RERUN_XML")"
      shift 2
      ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_proof: unknown argument '$1' (expected --rehearse and/or --rerun FILE)" >&2; exit 2 ;;
  esac
done
LABEL="$MODE$([ "$REHEARSE" = 1 ] && echo ', rehearsal')"

OUT="${OUT:-gpu-proof-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastvae-proof.XXXXXX")"
PY="${PYTHON:-python3}"
DEADLINE_S="${FASTVAE_PROOF_SECONDS:-540}"
RESERVE_S=20   # kept back for the summary
START=$SECONDS
: > "$WORK/stages.tsv"
: > "$OUT/stages.log"

if [ "$REHEARSE" = 1 ]; then
  export TRITON_INTERPRET=1
  GPU=0
else
  GPU=1
  export PYTHONUNBUFFERED=1
fi

have_module() { "$PY" -c "import $1" >/dev/null 2>&1; }

# record NAME STATUS SECONDS DETAIL
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/stages.tsv"; }

# stage NAME BUDGET_S COMMAND: run COMMAND (a bash string) under timeout, log it, record the outcome.
stage() {
  local name="$1" budget="$2" command="$3"
  local left=$((DEADLINE_S - RESERVE_S - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    record "$name" skipped 0 "skipped: no time left before the ${DEADLINE_S}s deadline"
    echo "== $name: skipped (no time left)" | tee -a "$OUT/stages.log"
    return 0
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  echo "== $name (budget ${budget}s): $command" | tee -a "$OUT/stages.log"
  local began=$SECONDS rc
  timeout --kill-after=10 "$budget" bash -c "$command" > "$WORK/$name.out" 2>&1
  rc=$?
  local took=$((SECONDS - began))
  tail -n 40 "$WORK/$name.out" >> "$OUT/stages.log"
  echo "== $name: exit $rc after ${took}s" | tee -a "$OUT/stages.log"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" skipped "$took" "skipped: did not finish within its ${budget}s budget"
  elif [ "$rc" -eq 0 ]; then
    record "$name" ok "$took" "$(tail -n 1 "$WORK/$name.out" | tr '\t' ' ' | cut -c1-160)"
  else
    record "$name" failed "$took" "exit $rc: $(tail -n 1 "$WORK/$name.out" | tr '\t' ' ' | cut -c1-160)"
  fi
  return 0
}

no_gpu() { record "$1" skipped 0 "skipped: no GPU"; echo "== $1: skipped: no GPU" | tee -a "$OUT/stages.log"; }

# --- what each stage runs ---------------------------------------------------------------------------

JOBS=$(( $(nproc) / 2 )); [ "$JOBS" -lt 1 ] && JOBS=1; [ "$JOBS" -gt 8 ] && JOBS=8
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts=)
PYTEST_TAIL=""
if have_module xdist && [ "$GPU" = 1 ]; then PYTEST_TAIL+=" -n $JOBS"; fi
if have_module pytest_timeout; then PYTEST_TAIL+=" --timeout 120"; fi
OP_TESTS="$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import gpu_proof; print(" ".join(gpu_proof.OP_TEST_FILES))')"

env_cmd='{ date -u +%Y-%m-%dT%H:%M:%SZ; echo "commit ${FASTVAE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}";
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || echo "nvidia-smi: none";
  '"$PY"' -c "import sys, platform, torch, triton; print(\"python\", sys.version.split()[0], platform.machine()); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda); print(\"triton\", triton.__version__); print(\"gpus\", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])";
  echo "cpus $(nproc)"; nvcc --version 2>&1 | tail -n 1; } > "'"$OUT"'/env.txt" 2>&1; cat "'"$OUT"'/env.txt"'

build_cmd="FASTVAE_CUDA_ARCHS=90a $PY -m pip install --no-build-isolation --no-deps -e . > $WORK/build.log 2>&1 || { echo 'CUDA build failed; reinstalling without the extension'; tail -n 30 $WORK/build.log; FASTVAE_NO_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . >> $WORK/build.log 2>&1; }; tail -n 3 $WORK/build.log; $PY -c 'import fastvae; print(\"backends:\", fastvae.available_backends())'"
if [ "$GPU" = 0 ]; then
  # The rehearsal exercises the fallback install (no CUDA extension) in the current environment.
  # (A venv without setuptools, Python >= 3.12's default, installs with build isolation instead.)
  build_cmd="{ FASTVAE_NO_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . || FASTVAE_NO_CUDA=1 $PY -m pip install --no-deps -e .; } > $WORK/build.log 2>&1; rc=\$?; tail -n 3 $WORK/build.log; $PY -c 'import fastvae; print(\"backends:\", fastvae.available_backends())'; exit \$rc"
fi

smoke_cmd="$PY benchmarks/gpu_smoke.py --out $WORK/smoke.json$([ "$GPU" = 0 ] && echo ' --rehearse')"

if [ "$GPU" = 1 ]; then
  # Each xdist worker's CPU ops (PyTorch's and the cpu backend's, which share its OpenMP pool) get
  # their share of the cores, not all of them each: oversubscribed OpenMP barriers wait out whole
  # scheduler slices.
  tests_cmd="OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 )) ${PYTEST[*]} $OP_TESTS -m 'not slow' $PYTEST_TAIL --junitxml $WORK/tests.xml"
else
  tests_cmd="${PYTEST[*]} $OP_TESTS -m 'not slow' -k 'zero_size or empty' $PYTEST_TAIL --junitxml $WORK/tests.xml"
fi
sanitize_cmd() {  # sanitize_cmd TOOL: compute-sanitizer over the proof's selection for TOOL
  echo "$PY benchmarks/gpu_proof.py sanitize-tests $1 > $WORK/$1.ids && echo \"\$(wc -l < $WORK/$1.ids) tests\" && compute-sanitizer --tool $1 --error-exitcode 99 --target-processes all $PY -m pytest -q -p no:cacheprovider -o addopts= \$(cat $WORK/$1.ids) > $WORK/$1.log 2>&1; rc=\$?; grep -E 'ERROR SUMMARY|passed|failed' $WORK/$1.log | tail -n 3; exit \$rc"
}

if [ "$GPU" = 1 ]; then
  bench_cmd="$PY -m fastvae bench --out $WORK/bench && cp $WORK/bench/bench.json $WORK/bench/bench.md $OUT/"
  slow_cmd="${PYTEST[*]} $OP_TESTS -m slow --junitxml $WORK/slow.xml"
  training_cmd="$PY -m fastvae bench --training --training-max-batch 8192 --out $WORK/training"
  quantisers_cmd="$PY -m fastvae bench --peer --shapes N1048576xD4 N1048576xD16 N1048576xQ8xK1024xD128 --dtypes fp32 bf16 --out $WORK/quantisers"
else
  bench_cmd="$PY -m fastvae bench --quick --ops reparameterize_kl --dtypes fp32 --out $WORK/bench && cp $WORK/bench/bench.json $WORK/bench/bench.md $OUT/"
  slow_cmd="${PYTEST[*]} $OP_TESTS -m slow --collect-only"
  training_cmd="$PY -m fastvae bench --training --training-variants fastvae --out $WORK/training"
  quantisers_cmd="$PY -m fastvae bench --peer --shapes N4096xD4 N256xD10 N256xQ8xK1024xD128 --dtypes fp32 --backends torch --repeats 1 --warmup 1 --out $WORK/quantisers"
fi

# --- the run ----------------------------------------------------------------------------------------

run_stage() {  # run_stage NAME: one stage of the list above
  case "$1" in
    env) stage env 20 "$env_cmd" ;;
    build) stage build 200 "$build_cmd" ;;
    smoke) stage smoke 90 "$smoke_cmd" ;;
    tests)
      if [ "$GPU" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
        # memcheck runs beside the suite: the GPU has room for both, the suite has the CPU cores.
        ( stage memcheck 170 "$(sanitize_cmd memcheck)" ) &
        local sanitizer_pid=$!
        stage tests 170 "$tests_cmd"
        wait "$sanitizer_pid"
      else
        stage tests 170 "$tests_cmd"
        if [ "$GPU" = 1 ]; then record memcheck skipped 0 "skipped: compute-sanitizer not found"; else no_gpu memcheck; fi
      fi
      ;;
    memcheck) stage memcheck 170 "$(sanitize_cmd memcheck)" ;;
    bench) stage bench 170 "$bench_cmd" ;;
    racecheck)
      if [ "$GPU" = 1 ]; then stage racecheck 90 "$(sanitize_cmd racecheck)"; else no_gpu racecheck; fi
      ;;
    slow) stage slow 120 "$slow_cmd" ;;
    training) stage training 120 "$training_cmd" ;;
    quantisers) stage quantisers 90 "$quantisers_cmd" ;;
  esac
}

STAGES=(env build smoke tests bench racecheck slow training quantisers)
if [ "$MODE" = rerun ]; then
  proof_json="$(dirname "$RERUN_XML")/proof.json"
  # The failed tests of that run, with full tracebacks; then each stage it skipped.
  mapfile -t again < <("$PY" -c '
import json, sys
try:
    stages = json.load(open(sys.argv[1]))["stages"]
except (OSError, ValueError, KeyError):
    stages = []
print("\n".join(s["stage"] for s in stages if s["status"] == "skipped" and s["detail"] != "skipped: no GPU"))
' "$proof_json")
  run_stage env
  if ! "$PY" -c 'import fastvae' >/dev/null 2>&1; then run_stage build; fi
  "$PY" benchmarks/gpu_proof.py failed "$RERUN_XML" > "$WORK/rerun.ids"
  echo "rerunning $(wc -l < "$WORK/rerun.ids") failed tests of $RERUN_XML" | tee -a "$OUT/stages.log"
  if [ -s "$WORK/rerun.ids" ]; then
    stage rerun 240 "${PYTEST[*]} --tb=long -rfE --junitxml $WORK/rerun.xml \$(cat $WORK/rerun.ids)"
  else
    record rerun ok 0 "no failed tests to rerun"
  fi
  for name in "${again[@]}"; do
    [ -n "$name" ] && [ "$name" != build ] && run_stage "$name"
  done
else
  for name in "${STAGES[@]}"; do run_stage "$name"; done
fi

# --- results ----------------------------------------------------------------------------------------
"$PY" benchmarks/gpu_proof.py merge-junit "$OUT/tests.xml" "$WORK/tests.xml" "$WORK/slow.xml" "$WORK/rerun.xml"
cat "$WORK"/memcheck.log "$WORK"/racecheck.log > "$OUT/sanitizer.log" 2>/dev/null
"$PY" benchmarks/gpu_proof.py summary "$WORK" "$OUT"
echo "gpu_proof ($LABEL): $((SECONDS - START))s; results in $OUT"
