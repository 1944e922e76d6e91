#!/usr/bin/env bash
# A GPU node's check as one prepared command, for a machine that is held for minutes:
# installs the wheelhouse the way a node without internet does, then runs gpu-check's
# stages, ordered and bounded so that a short hold of the machine still returns every
# finished part.
#
#     make wheelhouse PYTHON_VERSION=3.12           # here, first; `wheelhouse/` is carried
#     bash .ci/gpu_node_check.sh OUT_DIR            # there (device: carry ["wheelhouse"])
#
# Phases (seconds are upper bounds, each enforced with `timeout`):
#   1. install + environment                               -> OUT/env.txt
#   2. generated data (gpu-check with every stage skipped)  -> OUT/data.log
#   3. side by side, none of it timed: the cuda tests and the crops check, then a few
#      test files whose code paths change when CUDA is present (tests.log, tests.json);
#      the training check, bf16 and fp16 under torchrun, stop + resume (train.log,
#      train.json)
#   4. alone on the GPU, last: the speed table (speed.log, speed.json, speed.md)
# PHASES (default "tests train speed") names the phases 3-4 to run; a rerun in what is
# left of a lease can take fewer. BROAD_TESTS=0 leaves out the extra test files.
# The tests run from a copy of the checkout without ffcv_imagenet/, so that they import
# the installed package (the checkout's sources lack the compiled extension).
set -uo pipefail
mkdir -p "${1:?usage: $0 OUT_DIR}" && OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/gpu_node_check}
PY=${PYTHON:-python3}
cd /tmp  # not the checkout: its sources, without the compiled extension, would shadow the install
export PYTHONUNBUFFERED=1
PHASES=${PHASES:-tests train speed}
BROAD_TESTS=${BROAD_TESTS:-1}
T0=$SECONDS
stamp() { echo "== $* (t=$((SECONDS - T0)) s)"; }

{
    stamp install
    # the documented way first (into the node's environment); a read-only environment
    # falls back to a target folder
    # (then reinstalled: a rebuilt wheel keeps its version, which pip would skip on a
    # machine kept warm between two runs)
    rm -rf "$WORK/site"
    if "$PY" -m pip install -q --no-index --find-links "$ROOT/wheelhouse" ffcv_imagenet; then
        "$PY" -m pip install -q --no-index --find-links "$ROOT/wheelhouse" --no-deps \
            --force-reinstall ffcv_imagenet
    else
        stamp "install into the environment failed; --target $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" \
            "$ROOT"/wheelhouse/{ffcv,fastargs,ffcv_imagenet,terminaltables}-*.whl
        export PYTHONPATH=$WORK/site
    fi
    stamp environment
    nvidia-smi
    nproc; free -g | head -2
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|numpy|numba|ffcv|fastargs|opencv|pytest)'
    "$PY" -c 'import ffcv_imagenet.data.read.jpeg_region as j, ffcv; print("imports ok", j.__file__)'
} > "$OUT/env.txt" 2>&1 || { echo "install failed: see env.txt"; cat "$OUT/env.txt"; exit 1; }
tail -n 4 "$OUT/env.txt"

check() {  # check NAME SECONDS ARGS...: gpu-check into $WORK/NAME sharing the data
    local name=$1 limit=$2; shift 2
    mkdir -p "$WORK/$name"
    [[ $name == data || -e $WORK/$name/data ]] || ln -s "$WORK/data/data" "$WORK/$name/data"
    # (-k: a hung child, torchrun say, would hold the GPU into the next phase)
    timeout -k 15 "$limit" "$PY" -m ffcv_imagenet gpu-check --out "$WORK/$name" "$@"
    local rc=$?
    cp "$WORK/$name/gpu_check.json" "$OUT/$name.json" 2>/dev/null
    [[ $name == speed ]] && cp "$WORK/$name/gpu_check.md" "$OUT/speed.md" 2>/dev/null
    stamp "$name exit $rc"
    return "$rc"
}

stamp data
# (the later phases would otherwise each write the data at once, into one folder)
check data 90 --skip cuda-tests crops training speed > "$OUT/data.log" 2>&1 \
    || { tail -n 20 "$OUT/data.log"; exit 1; }
tail -n 2 "$OUT/data.log"

# the checkout without its package sources (tests read files at its root at collection)
rm -rf "$WORK/clone" && mkdir -p "$WORK/clone"
tar -C "$ROOT" --exclude=./.git --exclude=./ffcv_imagenet --exclude=./wheelhouse \
    --exclude='./.venv*' --exclude=./.wheels --exclude=./data -cf - . | tar -C "$WORK/clone" -xf -
wants() { [[ " $PHASES " == *" $1 "* ]]; }
failed=0
jobs_started=()
if wants tests; then
    (
        check tests 100 --skip training speed --tests "$WORK/clone/tests"; rc=$?
        [[ $BROAD_TESTS == 1 ]] || exit $rc
        stamp "test files with CUDA present"
        cd "$WORK/clone" && timeout -k 15 120 "$PY" -m pytest -q -ra -p no:cacheprovider \
            -m 'not slow' -n 4 tests/data/read/test_loaders.py \
            tests/data/read/test_ffcv_loader.py tests/training tests/cli/test_recipe.py \
            tests/test_train.py 2>&1 | tail -n 40
        (( rc == 0 && PIPESTATUS[0] == 0 )) || rc=1
        stamp "tests done"
        exit $rc
    ) > "$OUT/tests.log" 2>&1 &
    jobs_started+=($!)
fi
if wants train; then
    check train 220 --skip cuda-tests crops speed > "$OUT/train.log" 2>&1 &
    jobs_started+=($!)
fi
for job in "${jobs_started[@]}"; do wait "$job" || failed=1; done
grep -h '^\[' "$OUT"/{tests,train}.log 2>/dev/null
if wants speed; then
    stamp speed
    check speed 250 --skip cuda-tests crops training > "$OUT/speed.log" 2>&1 || failed=1
    cat "$OUT/speed.log"; cat "$OUT/speed.md" 2>/dev/null
fi
stamp "end ($( ((failed)) && echo 'a phase FAILED' || echo 'every phase passed'))"
exit $failed
