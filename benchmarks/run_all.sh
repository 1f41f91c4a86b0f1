#!/usr/bin/env bash
# Every benchmark with the options of the README's tables, one run per script, for an idle
# machine (benchmarks/README.md lists what each measures). Each script's output goes to
# OUTDIR/NN-name.txt and to the terminal; a script that fails is reported at the end and
# the others still run.
#
# Usage: benchmarks/run_all.sh [OUTDIR]
#   PYTHON          interpreter with the package's dependencies and the Python peers (default: python)
#   GPBOOST_PYTHON  interpreter with gpboost (default: /work/venvs/crossed/bin/python)
#   SKIP_LONG=1     skip the two longest runs: crossed at 10^7 rows (~15 min, mostly gpboost)
#                   and 1,000 InstEval bootstrap replicates (~4 min)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
GPB=${GPBOOST_PYTHON:-/work/venvs/crossed/bin/python}
OUT=${1:-/tmp/mixedlm-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
failed=()
step=0

run() {  # run NAME SCRIPT ARGS...
    local name=$1
    shift
    step=$((step + 1))
    local log
    log=$(printf "%s/%02d-%s.txt" "$OUT" "$step" "$name")
    echo "=== $(date '+%F %T') $name: $PY $*" | tee "$log"
    "$PY" "$@" 2>&1 | tee -a "$log"
    local status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || failed+=("$name (exit $status)")
}

echo "machine: $(uname -srm); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); output in $OUT"

run small        benchmarks/bench_small.py --repeat 20
run fit          benchmarks/bench_fit.py --sizes 1e4,1e5,1e6 --repeat 7
run insteval     benchmarks/bench_insteval.py --repeat 5
run profile      benchmarks/bench_profile.py --repeat 3
run glmm         benchmarks/bench_glmm.py --repeat 5
run crossed      benchmarks/bench_crossed.py --gpboost-python "$GPB" --sizes 2e5:1e4:2e3,1e6:5e4:1e4 --repeat 3
run glmm-crossed benchmarks/bench_glmm_crossed.py --gpboost-python "$GPB" --repeat 1
run memory       benchmarks/memory_fit.py --rows 1e7 --dir "$OUT/memory-data"
rm -rf "$OUT/memory-data"
run bootstrap    benchmarks/bench_bootstrap.py
run many         benchmarks/bench_many_responses.py
run structures   benchmarks/bench_structures.py --repeat 3
if [ "${SKIP_LONG:-0}" != 1 ]; then
    run crossed-1e7        benchmarks/bench_crossed.py --gpboost-python "$GPB" --sizes 1e7:1e6:1e5 \
                           --solvers iterative,gpboost
    run bootstrap-insteval benchmarks/bench_bootstrap.py --case insteval --n-boot 1000 --peers ours \
                           --repeat 1 --n-jobs 2
fi
run evaluations  benchmarks/evaluations.py

echo
echo "done $(date '+%F %T'); load $(cut -d' ' -f1-3 /proc/loadavg); outputs in $OUT"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
