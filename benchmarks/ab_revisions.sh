#!/usr/bin/env bash
# A/B of two git revisions' loaders: benchmarks/loader_ab.py run once under each
# revision per round, in separate processes, the order reversed every other round
# (the machine's speed drifts within minutes), then each row's ratio B / A of the sums
# over the rounds (all images over all time) and the range of the rounds' ratios.
#
#   benchmarks/ab_revisions.sh REV_A REV_B ROUNDS [loader_ab.py arguments]
#   e.g. benchmarks/ab_revisions.sh 2735921 66429da 6
#
# AB_SCRIPT=<another script> runs that one instead, with the arguments given, e.g.
#   AB_SCRIPT=benchmarks/train_loader_epochs.py benchmarks/ab_revisions.sh \
#       57d556a 80ecd96 3 float32 wrapped 7
# prints its output per round (the ratios are then left to the reader).
#
# Run from the top of a git checkout: the revisions are read with git archive, which
# writes nothing to the repository. Each revision's tree is exported to
# $AB_DIR/<rev> (default /tmp/ab_revisions) and, where it has the compiled extension
# (80ecd96 on), built in place there (needs make system-packages' compiler and
# libjpeg). Python: $PYTHON, else .venv/bin/python (make install), else python3.
# loader_ab.py needs data/betons/{train,val}.beton (make demo, or
# make data/betons/val.beton) unless given --betons.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
REV_A=$1 REV_B=$2 ROUNDS=$3
shift 3
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
case $PYTHON in /*) ;; */*) PYTHON=$PWD/$PYTHON ;; esac  # the builds run elsewhere
AB_DIR=${AB_DIR:-/tmp/ab_revisions}
SCRIPT=${AB_SCRIPT:-$(cd "$(dirname "$0")" && pwd)/loader_ab.py}
mkdir -p "$AB_DIR"
RESULTS=$(mktemp -d "$AB_DIR/results.XXXXXX")

export_revision() {  # $1: revision; prints the folder to put on PYTHONPATH
  local dir=$AB_DIR/$(git rev-parse --short=12 "$1^{commit}")
  if [ ! -d "$dir/ffcv_imagenet" ]; then
    mkdir -p "$dir"
    git archive "$1" | tar -x -C "$dir"  # the whole tree: setup() reads pyproject's files
    if [ -n "$(find "$dir/ffcv_imagenet" -name '*.c' -print -quit)" ]; then
      # the extension that revision's pyproject.toml names, built beside its sources
      (cd "$dir" && "$PYTHON" -W ignore -c 'from setuptools import setup; setup()' \
         -q build_ext --inplace >&2)
    fi
  fi
  echo "$dir"
}

DIR_A=$(export_revision "$REV_A")
DIR_B=$(export_revision "$REV_B")
for round in $(seq "$ROUNDS"); do
  order="a b"
  [ $((round % 2)) = 0 ] && order="b a"
  for side in $order; do
    if [ "$side" = a ]; then dir=$DIR_A rev=$REV_A; else dir=$DIR_B rev=$REV_B; fi
    result=$(PYTHONPATH="$dir" "$PYTHON" "$SCRIPT" "$@")
    echo "round $round, $rev: $result"
    echo "$result" | tail -1 >> "$RESULTS/$side.jsonl"
  done
done
[ -z "${AB_SCRIPT:-}" ] || exit 0
"$PYTHON" - "$RESULTS" "$REV_A" "$REV_B" <<'PY'
import json, sys
a, b = ([json.loads(line) for line in open(f"{sys.argv[1]}/{side}.jsonl")] for side in 'ab')
print(f"{sys.argv[3]} / {sys.argv[2]}, ratio of the sums over {len(a)} rounds "
      "(the rounds' ratios):")
for key in a[0]:
    # each round times the same images, so the ratio of the summed times
    total = sum(1 / r[key] for r in a) / sum(1 / r[key] for r in b)
    rounds = [rb[key] / ra[key] for ra, rb in zip(a, b)]
    print(f"  {key:22s} {total:.3f}x ({min(rounds):.2f}-{max(rounds):.2f})")
PY
