#!/usr/bin/env bash
# A GPU node's check as one prepared command, for a machine that is held for minutes:
# installs the wheelhouse the way a node without internet does, then runs gpu-check's
# stages, ordered and bounded so that a short hold of the machine still returns every
# finished part.
#
#     make wheelhouse PYTHON_VERSION=3.12           # here, first; `wheelhouse/` is carried
#     bash .ci/gpu_node_check.sh OUT_DIR            # there (device: carry ["wheelhouse"])
#
# Phases, in order of value (seconds are upper bounds, each enforced with `timeout`;
# about 7 minutes in all on one H100 or H200):
#   1. install + environment (lscpu, nvidia-smi, versions)      -> OUT/env.txt
#   2. generated data in both storages: the published one (500 px, half the images
#      raw) and 256 px JPEG (gpu-check with every stage skipped) -> OUT/data.log
#   3. speed, alone on the GPU: end to end at 160 and 192 px on the published storage,
#      eager then compiled, 14 decoding threads, beside the model alone, batch 512
#      (and 256); then 256 px JPEG                               -> OUT/speed.{log,json,md}
#   4. the trainer: bench trainer on rn50_32_epochs, shortened, published storage, and
#      the recipe projected as published and with the speed-run settings
#                                                                -> OUT/trainer.{log,json}
#   5. the loader alone at 1, 2, 4, 8 and 14 threads on both storages, and with
#      reduced-scale decoding                                    -> OUT/threads.{log,json}
#   6. BlurPool's forms, model alone                             -> OUT/blurpool.log
#   7. DDP's own cost: model alone in a process group of one over NCCL, buckets of
#      25 and 100 MiB, beside the same model without DDP        -> OUT/ddp.log
#   8. torch.compile's modes (default, reduce-overhead: CUDA graphs), model alone at
#      160 px, with each one's compilation (first step)         -> OUT/modes.log
#   9. side by side: the cuda tests and the crops check; the training check, bf16 and
#      fp16 under torchrun, stop + resume                       -> OUT/{tests,train}.log
# PHASES (default "speed trainer threads blurpool ddp modes tests train") names phases 3-9 to
# run; a rerun in what is left of a lease can take fewer. WORKERS (default 14, or the
# CPUs where there are fewer) is the decoding threads of the speed and trainer phases.
# DEVICE=cpu runs every phase at toy size on a machine without a GPU (the phases' own
# check), and INSTALL=0 uses the environment as it is instead of the wheelhouse.
# The tests run from a copy of the checkout without ffcv_imagenet/, so that they import
# the installed package (the checkout's sources lack the compiled extension).
set -uo pipefail
mkdir -p "${1:?usage: $0 OUT_DIR}" && OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/gpu_node_check}
PY=${PYTHON:-python3}
cd /tmp  # not the checkout: its sources, without the compiled extension, would shadow the install
export PYTHONUNBUFFERED=1
PHASES=${PHASES:-speed trainer threads blurpool ddp modes tests train}
WORKERS=${WORKERS:-$(( $(nproc) < 14 ? $(nproc) : 14 ))}
DEVICE=${DEVICE:-cuda}
INSTALL=${INSTALL:-1}
# the bench commands' sizes: ResNet-50 at the recipes' batch, or toy size on the CPU
if [[ $DEVICE == cpu ]]; then
    SIZES=(--arch resnet18 --resolution 32 --batch-size 8 --steps 2 --warmup 1)
    MODE_STEPS=()
    TRAINER_SIZES=(--set model.arch=resnet18 --set resolution.min_res=32
                   --set resolution.max_res=48 --set validation.resolution=32
                   --set training.batch_size=8 --set validation.batch_size=8)
else
    SIZES=(--resolution 160 --batch-size 512)
    MODE_STEPS=(--steps 40 --warmup 5)
    TRAINER_SIZES=()
fi
T0=$SECONDS
stamp() { echo "== $* (t=$((SECONDS - T0)) s)"; }

{
    stamp install
    # the documented way first (into the node's environment); a read-only environment
    # falls back to a target folder
    # (then reinstalled: a rebuilt wheel keeps its version, which pip would skip on a
    # machine kept warm between two runs)
    rm -rf "$WORK/site" "$WORK/trainer"
    if [[ $INSTALL != 1 ]]; then
        echo "INSTALL=$INSTALL: the environment as it is"
    elif "$PY" -m pip install -q --no-index --find-links "$ROOT/wheelhouse" ffcv_imagenet; then
        "$PY" -m pip install -q --no-index --find-links "$ROOT/wheelhouse" --no-deps \
            --force-reinstall ffcv_imagenet
    else
        stamp "install into the environment failed; --target $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" \
            "$ROOT"/wheelhouse/{ffcv,fastargs,ffcv_imagenet,terminaltables}-*.whl
        export PYTHONPATH=$WORK/site
    fi
    stamp environment
    nvidia-smi || echo "no nvidia-smi"
    lscpu
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
    timeout -k 15 "$limit" "$PY" -m ffcv_imagenet gpu-check --device "$DEVICE" \
        --out "$WORK/$name" "$@"
    local rc=$?
    cp "$WORK/$name/gpu_check.json" "$OUT/$name.json" 2>/dev/null
    [[ $name == speed ]] && cp "$WORK/$name/gpu_check.md" "$OUT/speed.md" 2>/dev/null
    stamp "$name exit $rc"
    return "$rc"
}

stamp data
# (the later phases would otherwise each write the data at once, into one folder)
check data 150 --skip cuda-tests crops training speed loader-threads > "$OUT/data.log" 2>&1 \
    || { tail -n 20 "$OUT/data.log"; exit 1; }
tail -n 2 "$OUT/data.log"
PUBLISHED=$WORK/data/data/rn50-published

wants() { [[ " $PHASES " == *" $1 "* ]]; }
failed=0
if wants speed; then
    stamp speed
    check speed 200 --workers "$WORKERS" --skip cuda-tests crops training loader-threads \
        > "$OUT/speed.log" 2>&1 || failed=1
    cat "$OUT/speed.log"; cat "$OUT/speed.md" 2>/dev/null
fi
if wants trainer; then
    stamp trainer
    timeout -k 15 100 "$PY" -m ffcv_imagenet bench trainer -C rn50_32_epochs.yaml \
        --set "data.train_dataset=$PUBLISHED/train.beton" \
        --set "data.val_dataset=$PUBLISHED/val.beton" --set "data.num_workers=$WORKERS" \
        --set "training.device=$DEVICE" "${TRAINER_SIZES[@]}" --out "$WORK/trainer" \
        --gpus 8 --variant-set validation.every=2 --variant-set validation.start_epoch=25 \
        --variant-set checkpoint.last_every=30m --variant-set logging.progress=0 \
        --json "$OUT/trainer.json" > "$OUT/trainer.log" 2>&1
    rc=$?; ((rc == 0)) || failed=1
    stamp "trainer exit $rc"; tail -n 40 "$OUT/trainer.log"
fi
if wants threads; then
    stamp threads
    check threads 90 --skip cuda-tests crops training speed > "$OUT/threads.log" 2>&1 \
        || failed=1
    cat "$OUT/threads.log"
fi
if wants blurpool; then
    stamp blurpool
    timeout -k 15 60 "$PY" -m ffcv_imagenet bench train --beton "$PUBLISHED/train.beton" \
        "${SIZES[@]}" --workers "$WORKERS" --blurpool-forms --device "$DEVICE" \
        > "$OUT/blurpool.log" 2>&1
    rc=$?; ((rc == 0)) || failed=1
    stamp "blurpool exit $rc"; cat "$OUT/blurpool.log"
fi
if wants ddp; then
    stamp ddp
    timeout -k 15 60 "$PY" -m ffcv_imagenet bench train --beton "$PUBLISHED/train.beton" \
        "${SIZES[@]}" "${MODE_STEPS[@]}" --workers "$WORKERS" --device "$DEVICE" \
        --ddp-buckets 25 100 --json "$OUT/ddp.json" > "$OUT/ddp.log" 2>&1
    rc=$?; ((rc == 0)) || failed=1
    stamp "ddp exit $rc"; cat "$OUT/ddp.log"
fi
if wants modes; then
    stamp modes
    timeout -k 15 240 "$PY" -m ffcv_imagenet bench train --beton "$PUBLISHED/train.beton" \
        "${SIZES[@]}" "${MODE_STEPS[@]}" --workers "$WORKERS" --device "$DEVICE" \
        --compile-modes default reduce-overhead --json "$OUT/modes.json" \
        > "$OUT/modes.log" 2>&1
    rc=$?; ((rc == 0)) || failed=1
    stamp "modes exit $rc"; cat "$OUT/modes.log"
fi

# the checkout without its package sources (tests read files at its root at collection)
rm -rf "$WORK/clone" && mkdir -p "$WORK/clone"
tar -C "$ROOT" --exclude=./.git --exclude=./ffcv_imagenet --exclude=./wheelhouse \
    --exclude='./.venv*' --exclude=./.wheels --exclude=./data -cf - . | tar -C "$WORK/clone" -xf -
jobs_started=()
if wants tests; then
    check tests 100 --skip training speed loader-threads --tests "$WORK/clone/tests" \
        > "$OUT/tests.log" 2>&1 &
    jobs_started+=($!)
fi
if wants train; then
    check train 150 --skip cuda-tests crops speed loader-threads > "$OUT/train.log" 2>&1 &
    jobs_started+=($!)
fi
for job in "${jobs_started[@]}"; do wait "$job" || failed=1; done
grep -h '^\[' "$OUT"/{tests,train}.log 2>/dev/null
stamp "end ($( ((failed)) && echo 'a phase FAILED' || echo 'every phase passed'))"
exit $failed
