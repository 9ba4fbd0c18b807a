#!/usr/bin/env bash
# The prepared GPU check (issue 27): one command, 3-4 min expected (at most 9) on one H100, every figure as JSON.
#
#   bash benchmarks/gpu_check.sh OUTDIR            # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh OUTDIR --smoke    # the same steps on the CPU at tiny sizes (CI; 1-2 min)
#   bash benchmarks/gpu_check.sh --fetch-wheels    # where pip reaches an index: .whl/ for a bare GPU machine
#
# OUTDIR receives at most 8 files: tests.json (the tests marked `cuda`), equality.json (CPU vs CUDA
# certificates of the digits model, same seeds: benchmarks/gpu_equality.py), throughput.json
# (bench_gpu_throughput.py: the batch-size table and ResNet-110 seconds per CIFAR-10 image at N = 100,000),
# certify_efficiency.json (bench_certify.py --efficiency-only), sequential.json (bench_sequential.py: the
# sequential mode's forward-batch fill), cifar_fixture.json (gpu_cifar_fixture.py: a locuslab-layout ResNet-110
# read by the pretrained-model loader, certified on the 20 CIFAR-10 images of the foolbox wheel), summary.json (every step's status and time, the headline figures,
# the machine) and log.txt. A failed step is recorded and the next one runs; the exit status is 0 only if
# every step passed. Scratch files (models, junit XML) go to a temporary folder, removed at the end.
#
# Python: $SMOOTHCERT_PYTHON, else .venv/bin/python (make setup), else python3. A GPU machine whose python3
# has torch but not all of the project's packages (a bare image) gets them from .whl/ if present: wheels made
# by --fetch-wheels on a machine with an index (for CPython 3.12 on x86-64 Linux), copied beside the repo.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=(jsonschema jsonschema-specifications referencing rpds-py foolbox)
NEEDED="torch numpy scipy yaml jsonschema pandas statsmodels sklearn matplotlib tabulate tqdm PIL pytest"

if [ "${1:-}" = "--fetch-wheels" ]; then
  py=${SMOOTHCERT_PYTHON:-python3}
  mkdir -p .whl
  exec "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
fi
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--smoke] | --fetch-wheels}
SMOKE=0
case "${2:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "gpu_check: unknown option ${2} (expected --smoke)" >&2; exit 2 ;;
esac
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/log.txt
: >"$LOG"
say() { echo "gpu_check: $*" | tee -a "$LOG" >&2; }

if [ -n "${SMOOTHCERT_PYTHON:-}" ]; then PY=$SMOOTHCERT_PYTHON
elif [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MPLBACKEND=Agg
if compgen -G ".whl/*.whl" >/dev/null; then
  say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into a temporary folder"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
    >>"$LOG" 2>&1 || { say "pip could not install .whl/*.whl with $PY (see $LOG)"; exit 3; }
  export PYTHONPATH=$REPO/src:$WORK/site${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $NEEDED 2>&1) || missing="python ($PY)"
if [ -n "$missing" ]; then
  say "$PY lacks: $missing. Either run 'make setup' (creates .venv with everything), or, for a bare GPU" \
      "machine whose python3 has torch: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where pip reaches an" \
      "index and bring .whl/ along (the device tool: carry [\".whl\"])."
  exit 3
fi
if [ $SMOKE = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "torch ($PY) sees no CUDA device: run with --smoke for the CPU version"
  exit 3
fi
# smoke: one torch thread (a shared 2-core CI machine runs ResNet-110 several times slower with two)
[ $SMOKE = 1 ] && export OMP_NUM_THREADS=1
MODE=$([ $SMOKE = 1 ] && echo smoke || echo full)
DEVICE=$([ $SMOKE = 1 ] && echo cpu || echo cuda)
say "mode $MODE, python $PY, results in $OUT"
STEPS=$WORK/steps.tsv
: >"$STEPS"

# step NAME LIMIT_S OUTPUT_FILE CMD...: run CMD with a time limit, log it, record status and seconds
step() {
  local name=$1 limit=$2 file=$3
  shift 3
  say "step $name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$file" >>"$STEPS"
  say "step $name: exit $rc after $((SECONDS - t0)) s"
}

CUDA_TESTS=$(grep -l "pytest.mark.cuda" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
step tests "$([ $SMOKE = 1 ] && echo 120 || echo 60)" tests.json "$PY" -m pytest -q -p no:cacheprovider -m cuda --junitxml="$WORK/junit.xml" $CUDA_TESTS
"$PY" - "$WORK/junit.xml" "$OUT/tests.json" <<'EOF' || say "no test report (the test step failed to start)"
import json, sys, xml.etree.ElementTree as ET
cases = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    detail = next((c.get("message", "") for c in case if c.tag in ("failure", "error", "skipped")), "")
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "seconds": float(case.get("time", 0)), "message": detail[:500]})
count = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
json.dump({"selected": "pytest -m cuda", "counts": count, "tests": cases}, open(sys.argv[2], "w"), indent=1)
EOF

if [ $SMOKE = 1 ]; then
  step equality 120 equality.json "$PY" benchmarks/gpu_equality.py --device cpu --inputs 6 --n 300 --epochs 2 \
    --work "$WORK/equality" --out "$OUT/equality.json"
  step throughput 120 throughput.json "$PY" benchmarks/bench_gpu_throughput.py --device cpu --n0 20 --n 40 \
    --inputs 1 --batch-sizes 20 --image-n 60 --image-inputs 1 --repeats 1 --out "$OUT/throughput.json"
  step certify_efficiency 120 certify_efficiency.json "$PY" benchmarks/bench_certify.py --device cpu --quick \
    --efficiency-only --skip-resnet --out "$OUT/certify_efficiency.json"
  step sequential 120 sequential.json "$PY" benchmarks/bench_sequential.py --dataset digits --device cpu \
    --sigmas 0.25 --inputs 8 --epochs 2 --n-max 4000 --batch-size 1000 --work "$WORK/sequential" \
    --out "$OUT/sequential.json"
  step cifar_fixture 120 cifar_fixture.json "$PY" benchmarks/gpu_cifar_fixture.py --device cpu --images 2 \
    --n0 10 --n 40 --batch-size 100 --out "$OUT/cifar_fixture.json"
else  # limits: 60 + 75 + 150 + 75 + 60 + 90 s, under a 10-minute call with the setup; expected 3-4 min
  step equality 75 equality.json "$PY" benchmarks/gpu_equality.py --device cuda --inputs 100 --epochs 20 \
    --work "$WORK/digits" --out "$OUT/equality.json"
  step throughput 150 throughput.json "$PY" benchmarks/bench_gpu_throughput.py --device cuda --inputs 16 \
    --repeats 2 --out "$OUT/throughput.json"
  step certify_efficiency 75 certify_efficiency.json "$PY" benchmarks/bench_certify.py --device cuda \
    --efficiency-only --out "$OUT/certify_efficiency.json"
  step sequential 60 sequential.json "$PY" benchmarks/bench_sequential.py --dataset digits --device cuda \
    --sigmas 0.25 --inputs 100 --epochs 20 --batch-size 16000 --work "$WORK/digits" \
    --out "$OUT/sequential.json"  # the same digits model as the equality step (same settings, same folder)
  step cifar_fixture 90 cifar_fixture.json "$PY" benchmarks/gpu_cifar_fixture.py --device cuda --n 100000 \
    --out "$OUT/cifar_fixture.json"
fi

"$PY" - "$STEPS" "$OUT" "$MODE" <<'EOF'
import json, sys, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
import harness

steps_file, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
steps = []
for line in steps_file.read_text().splitlines():
    name, rc, seconds, file = line.split("\t")
    status = "ok" if rc == "0" else ("timeout" if rc in ("124", "137") else "failed")
    if status == "ok" and not (out / file).exists():
        status = "failed"
    steps.append({"step": name, "status": status, "exit": int(rc), "seconds": int(seconds), "file": file})


def read(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def figure(fn):
    try:
        return fn()
    except (TypeError, KeyError, IndexError, StopIteration, ValueError):
        return None


tests, eq, tp, eff, seq, fx = (read(f) for f in ("tests.json", "equality.json", "throughput.json",
                                                 "certify_efficiency.json", "sequential.json", "cifar_fixture.json"))
if tests is not None and tests["counts"]["failure"] + tests["counts"]["error"]:
    next(s for s in steps if s["step"] == "tests")["status"] = "failed"
headline = {
    "cuda_tests": figure(lambda: tests["counts"]),
    "same_noise_flipped_argmax_draws": figure(lambda: {("autocast" if r["autocast"] else "float32"):
        f"{r['flipped_argmax_draws']} of {r['draws']}" for r in eq["same_noise"]}),
    "same_noise_inputs_prediction_differs": figure(lambda: {("autocast" if r["autocast"] else "float32"):
        r["inputs_prediction_differs"] for r in eq["same_noise"]}),
    "equality_ok": figure(lambda: eq["ok"]),
    "device_engine_same_prediction_fraction": figure(lambda: eq["device_engine"]["vs_cpu"]["same_prediction_fraction"]),
    "resnet110_seconds_per_image": figure(lambda: {("autocast" if r["amp"] else "float32"):
        {"s": r["seconds_per_input"], "n": r["n"], "batch_size": r["batch_size"], "meets_0.5s_goal": r["meets_goal"]}
        for r in tp["per_image"]}),
    "resnet110_evals_per_s_best": figure(lambda: max(r["evals_per_s"] for r in tp["results"]
                                                    if r["arch"] == "cifar_resnet110")),
    "certify_efficiency": figure(lambda: {f"{r['model']}/{r['workload']}": r["efficiency"] for r in eff["efficiency"]}),
    "sequential_batch_fill": figure(lambda: {m: r["batch_fill"] for s in seq["results"].values() for m, r in s.items()}),
    "cifar_fixture": figure(lambda: {k: fx[k] for k in ("images", "seconds_per_image", "certified", "ok")}
                            | {"n": fx["certify"]["n"], "relative_difference": fx["loaded_equals_reference"]["relative_difference"]}),
}
summary = {
    "mode": mode,
    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "ok": all(s["status"] == "ok" for s in steps),
    "steps": steps,
    "headline": headline,
    "machine": harness.machine(),
    "commit": harness.commit(),
}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({"ok": summary["ok"], "steps": {s["step"]: s["status"] for s in steps}, "headline": headline}, indent=1))
sys.exit(0 if summary["ok"] else 1)
EOF
rc=$?
say "done (exit $rc): $(ls "$OUT" | tr '\n' ' ')"
exit $rc
