#!/usr/bin/env bash
# A prepared GPU run of formal_lm, all within about 10 minutes, each stage under a `timeout`:
#
#   setup       a fresh venv: pip install -e ".[test]", then "jax[cuda12]==<that jax version>"
#   device      what JAX sees (and nvidia-smi -L)
#   tests       tests/test_models.py tests/test_loop.py tests/test_distributed.py (-x -q)
#   bench       benchmarks/bench_training.py at the paper shape, K = 1 8 32 64, with the in-run
#               plain padded reference (ratio = reference s/step / ours s/seed-step)
#   experiment  experiments/anbn-rule-extrapolation.toml --full (paper sizes) with its [full]
#               table's steps cut down, in a temporary copy
#
# then one summary table (stage, status, seconds, result). Exit status 0 when every stage
# passed, 1 otherwise.
#
# Without a GPU (no working nvidia-smi, or JAX finds no gpu after the install), or with --cpu /
# GPU_RUN_CPU=1, it runs a CPU fallback of the same stages at tiny sizes: the venv it is given
# (or .venv) instead of an install, the three test files collected but not run
# (GPU_RUN_CPU_TESTS=1 runs them), the small "cpu" benchmark shape with K = 1, 2 and 2 steps,
# and the experiment's default (CPU-sized) variant with 2 seeds and 2 steps.
#
# Usage:  bash benchmarks/gpu_run.sh [--cpu | --gpu] [--out DIR]
# Environment (all optional):
#   GPU_RUN_CPU=1           the CPU fallback (same as --cpu)
#   GPU_RUN_OUT=DIR         where logs, the benchmark's JSON and the experiment's report go
#                           (default: a new folder under $TMPDIR or /tmp)
#   GPU_RUN_VENV=DIR        use this venv as it is (no install; e.g. one prepared earlier on a
#                           machine without network access), in GPU mode too
#   GPU_RUN_PYTHON=python3  the interpreter that creates the fresh venv
#   GPU_RUN_BUDGET_S=590    total seconds; each stage gets min(its cap, what is left)
#   GPU_RUN_SETUP_S=150 GPU_RUN_DEVICE_S=30 GPU_RUN_TESTS_S=120 GPU_RUN_BENCH_S=150
#   GPU_RUN_EXPERIMENT_S=170   per-stage caps (seconds)
#   GPU_RUN_EXP_STEPS=40    optimizer steps of the experiment's [full] run (GPU mode)
#   GPU_RUN_BENCH_SEEDS="1 8 32 64"   values of K at the paper shape (GPU mode)
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

MODE=auto
OUT="${GPU_RUN_OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --gpu) MODE=gpu ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' \
            "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "${GPU_RUN_CPU:-0}" = 1 ] && MODE=cpu
if [ "$MODE" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        MODE=gpu
    else
        MODE=cpu
        echo "gpu_run.sh: no working nvidia-smi: CPU fallback at tiny sizes"
    fi
fi
[ -n "$OUT" ] || OUT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"

BUDGET=${GPU_RUN_BUDGET_S:-590}
START=$SECONDS
NAMES=() STATUS=() SECS=() RESULTS=()
FAILED=0

record() {  # name status seconds result
    NAMES+=("$1"); STATUS+=("$2"); SECS+=("$3"); RESULTS+=("$4")
    case "$2" in ok) ;; *) FAILED=1 ;; esac
}

# run_stage NAME CAP_SECONDS COMMAND...: runs the command under timeout, output to the terminal
# and to $OUT/NAME.log; sets STAGE_STATUS (ok / timeout / FAIL rc=N / skipped) and STAGE_SECS.
run_stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    local limit=$((cap < left ? cap : left))
    STAGE_SECS=0
    if [ "$limit" -lt 5 ]; then
        STAGE_STATUS="skipped (budget spent)"
        echo "=== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        return 1
    fi
    echo "=== $name (timeout ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    STAGE_SECS=$((SECONDS - t0))
    case $rc in
        0) STAGE_STATUS=ok ;;
        124|137) STAGE_STATUS="timeout (${limit}s)" ;;
        *) STAGE_STATUS="FAIL rc=$rc" ;;
    esac
    [ "$rc" = 0 ]
}

# ---------------------------------------------------------------------------------- setup
setup_fresh_venv() {  # creates $1 and installs the project (and, with "cuda", CUDA jax)
    local venv=$1 cuda=$2
    "${GPU_RUN_PYTHON:-python3}" -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet --upgrade pip || return 1
    "$venv/bin/pip" install --quiet -e ".[test]" || return 1
    local jaxv
    jaxv=$("$venv/bin/python" -c "import jax; print(jax.__version__)") || return 1
    echo "project's jax: $jaxv"
    if [ "$cuda" = cuda ]; then
        "$venv/bin/pip" install --quiet "jax[cuda12]==$jaxv" || return 1
    fi
    "$venv/bin/python" -c "import jax, jaxlib; print('installed: jax', jax.__version__, \
'jaxlib', jaxlib.__version__)"
}
export -f setup_fresh_venv

VENV=""
if [ -n "${GPU_RUN_VENV:-}" ]; then
    VENV="$GPU_RUN_VENV"
    run_stage setup 60 "$VENV/bin/python" -c "import formal_lm, jax; \
print('using the venv as it is:', '$VENV', '(jax', jax.__version__ + ')')"
    record setup "$STAGE_STATUS" "$STAGE_SECS" "given venv $VENV"
elif [ "$MODE" = gpu ]; then
    VENV="$OUT/venv"
    run_stage setup "${GPU_RUN_SETUP_S:-150}" bash -c "setup_fresh_venv '$VENV' cuda"
    record setup "$STAGE_STATUS" "$STAGE_SECS" \
        "$(grep -m1 '^installed:' "$OUT/setup.log" 2>/dev/null || echo "see $OUT/setup.log")"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import formal_lm" >/dev/null 2>&1; then
    VENV="$ROOT/.venv"
    record setup ok 0 "CPU fallback: existing .venv, no install"
else
    VENV="$OUT/venv"
    run_stage setup "${GPU_RUN_SETUP_S:-150}" bash -c "setup_fresh_venv '$VENV' cpu"
    record setup "$STAGE_STATUS" "$STAGE_SECS" "CPU fallback: fresh venv (CPU jax)"
fi
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "gpu_run.sh: no python in $VENV; stopping" >&2
    MODE=none
fi

# --------------------------------------------------------------------------------- device
if [ "$MODE" != none ]; then
    [ "$MODE" = gpu ] && nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.log"
    run_stage device "${GPU_RUN_DEVICE_S:-30}" "$PY" -c "
import jax
d = jax.devices()
print('backend:', jax.default_backend(), '| devices:', len(d), 'x', d[0].device_kind,
      '| jax', jax.__version__)
"
    DEVICE_LINE=$(grep -m1 '^backend:' "$OUT/device.log" 2>/dev/null || echo "see device.log")
    record device "$STAGE_STATUS" "$STAGE_SECS" "$DEVICE_LINE"
    if [ "$MODE" = gpu ] && ! grep -q '^backend: gpu' "$OUT/device.log" 2>/dev/null; then
        echo "gpu_run.sh: JAX finds no gpu: CPU fallback at tiny sizes"
        MODE=cpu
        STATUS[${#STATUS[@]} - 1]="FAIL no gpu"
        FAILED=1
    fi
fi

# ---------------------------------------------------------------------------------- tests
TESTS=(tests/test_models.py tests/test_loop.py tests/test_distributed.py)
if [ "$MODE" = gpu ] || { [ "$MODE" = cpu ] && [ "${GPU_RUN_CPU_TESTS:-0}" = 1 ]; }; then
    # Subprocess tests start more JAX processes: none of them may take most of the GPU memory.
    run_stage tests "${GPU_RUN_TESTS_S:-120}" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
        "$PY" -m pytest -x -q -p no:cacheprovider "${TESTS[@]}"
    record tests "$STAGE_STATUS" "$STAGE_SECS" \
        "$(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -n1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
elif [ "$MODE" = cpu ]; then
    run_stage tests "${GPU_RUN_TESTS_S:-120}" "$PY" -m pytest --collect-only -q \
        -p no:cacheprovider "${TESTS[@]}"
    record tests "$STAGE_STATUS" "$STAGE_SECS" \
        "CPU fallback, collected only: $(grep -E 'tests? collected' "$OUT/tests.log" | tail -n1)"
fi

# ---------------------------------------------------------------------------------- bench
if [ "$MODE" = gpu ]; then
    # shellcheck disable=SC2086
    run_stage bench "${GPU_RUN_BENCH_S:-150}" "$PY" benchmarks/bench_training.py --shape paper \
        --seeds ${GPU_RUN_BENCH_SEEDS:-1 8 32 64} --steps 5 --rounds 2 --json "$OUT/bench.json"
elif [ "$MODE" = cpu ]; then
    run_stage bench "${GPU_RUN_BENCH_S:-150}" "$PY" benchmarks/bench_training.py --shape cpu \
        --seeds 1 2 --steps 2 --rounds 1 --json "$OUT/bench.json"
fi
if [ "$MODE" != none ]; then
    BENCH=$("$PY" -c "
import json, sys
d = json.load(open(sys.argv[1]))
print(', '.join(f\"{s['shape']} K={s['K']}: {s['seed_step_s']:.4f} s/seed-step, ratio \"
                + (f\"{s['ratio']:.2f}\" if s['ratio'] is not None else '-')
                for s in d['summary']))
" "$OUT/bench.json" 2>/dev/null || echo "no results (see bench.log)")
    record bench "$STAGE_STATUS" "$STAGE_SECS" "$BENCH"
fi

# ----------------------------------------------------------------------------- experiment
# A copy of the experiment file with fewer steps (and, in the CPU fallback, fewer seeds and
# smaller analyses), written with tomllib + a small TOML writer and read back to check it.
make_copy() {  # mode dst
    "$PY" - "$1" "$2" experiments/anbn-rule-extrapolation.toml "${GPU_RUN_EXP_STEPS:-40}" <<'EOF'
import json, re, sys, tomllib

mode, dst, src, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(src, "rb") as f:
    d = tomllib.load(f)
if mode == "gpu":
    t = d["full"]["train"]
    t.update(steps=steps, eval_every=max(1, min(t.get("eval_every", steps), steps // 2)),
             checkpoint_every=steps)
else:  # tiny CPU sizes, default (non-full) variant
    d["train"].update(steps=2, seeds=2, eval_every=1, checkpoint_every=2)
    d["train"]["data"]["eval_size"] = 16
    d["analysis"]["saturation"]["n"] = 16
    d["analysis"]["rule_extrapolation"]["max_new_tokens"] = 12


def key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dump(table, path=()):
    lines = [f"[{'.'.join(key(p) for p in path)}]"] if path else []
    lines += [f"{key(k)} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += [""] + dump(v, path + (k,))
    return lines


text = "\n".join(dump(d)) + "\n"
assert tomllib.loads(text) == d, "the TOML writer changed the file's content"
with open(dst, "w") as f:
    f.write(text)
print(f"{dst}: " + (f"[full.train] steps = {steps}" if mode == "gpu" else
                    "[train] steps = 2, seeds = 2 (CPU fallback)"))
EOF
}

if [ "$MODE" != none ]; then
    COPY="$OUT/anbn-rule-extrapolation.toml"
    FORMAL_LM=("$PY" -c "import sys; from formal_lm.cli import main; sys.exit(main())")
    [ -x "$VENV/bin/formal-lm" ] && FORMAL_LM=("$VENV/bin/formal-lm")
    if make_copy "$MODE" "$COPY"; then
        if [ "$MODE" = gpu ]; then
            run_stage experiment "${GPU_RUN_EXPERIMENT_S:-170}" "${FORMAL_LM[@]}" run "$COPY" \
                --full --out "$OUT/anbn-full"
            REPORT="$OUT/anbn-full/report.md"
        else
            run_stage experiment "${GPU_RUN_EXPERIMENT_S:-170}" "${FORMAL_LM[@]}" run "$COPY" \
                --out "$OUT/anbn-tiny"
            REPORT="$OUT/anbn-tiny/report.md"
        fi
        if [ -f "$REPORT" ]; then
            RESULT="report: $REPORT"
        else
            RESULT="no report (see experiment.log)"
        fi
        record experiment "$STAGE_STATUS" "$STAGE_SECS" "$RESULT"
    else
        record experiment "FAIL (copy)" 0 "could not write the shortened copy"
    fi
fi

# -------------------------------------------------------------------------------- summary
echo
echo "=== summary (mode: $MODE, $(date '+%Y-%m-%d %H:%M:%S'), load $(cut -d' ' -f1-3 /proc/loadavg \
2>/dev/null), $((SECONDS - START)) s of a ${BUDGET} s budget, logs in $OUT)"
printf '| %-10s | %-22s | %7s | %s\n' stage status seconds result
printf '|%s|%s|%s|%s\n' "------------" "------------------------" "---------" "--------"
for i in "${!NAMES[@]}"; do
    printf '| %-10s | %-22s | %7s | %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" \
        "${RESULTS[$i]}"
done
exit $FAILED
