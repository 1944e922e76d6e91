# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   install, make synthetic data, convert it, benchmark the loader, save a
#               batch PNG, train ResNet-18 on it (the CPU demo recipe)
#   make test   install, run the whole test suite, then the tests of GPU_IMAGE_TESTS again
#               in a second environment with a GPU image's versions (what .ci/run calls)
# Both are idempotent: a second run reuses what is installed and generated.
# And for a GPU node without internet:
#   make wheelhouse PYTHON_VERSION=3.12   the wheels to copy there (see README)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
SYNTH := $(DATA)/synthetic
BETONS := $(DATA)/betons
DEMO_RUN ?= runs/rn18_cpu_demo
WORKERS ?= $(shell nproc)
# pytest-xdist processes for make test: one per core, at most 4 (each holds its own torch)
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
# loadgroup: the tests marked xdist_group('wheelhouse') share one worker, so the
# session's wheelhouse is built once
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadgroup
# ffcv 1.0.2+portable and the other wheels the pins need, built for the venv's Python
VENV_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCAL_WHEELS = .wheels/$(VENV_VERSION)
PYTHON_VERSION ?= $(VENV_VERSION)
WHEELHOUSE ?= wheelhouse
# the second test environment: what a current GPU image ships (.ci/gpu-image.txt)
GPU_IMAGE_VERSION := 3.12
GPU_IMAGE_VENV ?= .venv-gpu-image
GPU_IMAGE_PY := $(GPU_IMAGE_VENV)/bin/python
GPU_IMAGE_WHEELS := .wheels/$(GPU_IMAGE_VERSION)
# free disk (GB) the second environment's install and tests need at their peak
GPU_IMAGE_ROOM_GB ?= 9
# What that environment runs, instead of the whole suite: the tests whose outcome can
# change with its torch, numpy and numba, each after its reason; of their slow tests, only
# those marked gpu_image (the wheelhouse's), since the rest repeat the main suite's end-to-end
# runs without touching a version-specific path of their own.
# tests/test_packaging.py fails when a module of ffcv_imagenet/data/ or training/ is
# imported by no test file under these paths.
#  the wheelhouse installs offline, then converts and loads with the system's libraries hidden
GPU_IMAGE_TESTS := tests/test_install_offline.py
#  every module of the package imports with these versions, also from a wheel installed alone
GPU_IMAGE_TESTS += tests/test_packaging.py
#  the read side: numba compiles the decoders, the resize (its vector code) and JPEG region,
#  ffcv's Loader runs with this project's hooks and torch's threads; not test_loaders.py,
#  which checks the loaders' logic (orders, shards, crops) through the same compiled code
GPU_IMAGE_TESTS += tests/data/read/test_beton.py tests/data/read/test_dct_scaling.py
GPU_IMAGE_TESTS += tests/data/read/test_ffcv_loader.py tests/data/read/test_jpeg_region.py
GPU_IMAGE_TESTS += tests/data/read/test_orders.py tests/data/read/test_resize.py
GPU_IMAGE_TESTS += tests/data/read/test_sample_reads.py
GPU_IMAGE_TESTS += tests/data/read/test_torchvision_pipelines.py
#  torch: autocast, the gradient scaler, foreach EMA updates, fused SGD, DDP, save and load
GPU_IMAGE_TESTS += tests/training
#  the write side too: numpy converts the pixels (16-bit, float, alpha) that ffcv stores
GPU_IMAGE_TESTS += tests/data/write
#  numpy's generator draws the generated images (the data of a GPU node's check too)
GPU_IMAGE_TESTS += tests/data/test_synthetic.py
#  the one-line reasons both sides put in their errors (what every command prints)
GPU_IMAGE_TESTS += tests/data/test_messages.py
#  numba and ffcv: ffcv imported without compiling numba's typed dict, numba restored
GPU_IMAGE_TESTS += tests/data/test_ffcv_import.py
PYTHON312 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12) \
                         $(shell command -v python3.12))
WHEEL_SOURCES := pyproject.toml requirements.txt .ci/wheelhouse.sh .ci/portable_wheel.py \
                 ffcv_imagenet/data/read/jpeg_region.c
APT_PACKAGES := libturbojpeg0-dev libjpeg-dev libopencv-dev pkg-config build-essential
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-gpu-image room-for-gpu-image gpu-image-beside install system-packages bench bench-storage preview train use \
        clean wheelhouse

install: $(VENV)/.installed

system-packages:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); }

# ffcv comes from the wheelhouse build (compiled once, OpenCV inside, metadata that asks
# for no opencv-python), as on a GPU node; everything else from the pins
$(VENV)/.installed: $(WHEEL_SOURCES)
	$(MAKE) system-packages
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	.ci/wheelhouse.sh $(LOCAL_WHEELS) $(VENV_VERSION)
	@# an older venv may hold opencv-python, whose cv2 the headless one would overwrite
	$(PY) -m pip uninstall -y -q opencv-python 2>/dev/null || true
	$(PY) -m pip install -q --disable-pip-version-check --find-links $(LOCAL_WHEELS) \
	    -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# wheels for a GPU node without internet: make wheelhouse PYTHON_VERSION=3.12
wheelhouse:
	.ci/wheelhouse.sh $(WHEELHOUSE) $(PYTHON_VERSION)

# a GPU image's torch, torchvision, numpy and OpenCV, then this project from the
# wheelhouse exactly as a node without internet installs it
$(GPU_IMAGE_VENV)/.installed: $(WHEEL_SOURCES) .ci/gpu-image.txt
	$(MAKE) system-packages
	.ci/wheelhouse.sh $(GPU_IMAGE_WHEELS) $(GPU_IMAGE_VERSION)
	[ -x $(GPU_IMAGE_PY) ] || $(PYTHON312) -m venv $(GPU_IMAGE_VENV)
	$(GPU_IMAGE_PY) -m pip install -q --disable-pip-version-check -r .ci/gpu-image.txt
	$(GPU_IMAGE_PY) -m pip install -q --disable-pip-version-check --no-index \
	    --find-links $(GPU_IMAGE_WHEELS) ffcv_imagenet
	touch $@

$(SYNTH)/.done: | install
	$(PY) -m ffcv_imagenet synthetic --out $(SYNTH) --classes 10 \
	    --train-per-class 300 --val-per-class 50 --seed 0 --workers $(WORKERS)
	touch $@

$(BETONS)/train.beton: $(SYNTH)/.done
	$(PY) write_datasets.py --cfg.split=train --cfg.data_dir=$(SYNTH)/train \
	    --cfg.write_path=$@ --preset fast-256 --cfg.num_workers=$(WORKERS)

$(BETONS)/val.beton: $(BETONS)/train.beton
	$(PY) write_datasets.py --cfg.split=val --cfg.data_dir=$(SYNTH)/val \
	    --cfg.write_path=$@ --preset fast-256 --cfg.num_workers=$(WORKERS) \
	    --cfg.classes=$(BETONS)/train.beton.classes.json

bench: $(BETONS)/val.beton
	$(PY) -m ffcv_imagenet bench loader --beton $(BETONS)/train.beton \
	    --val-beton $(BETONS)/val.beton --folder $(SYNTH)/train --resolution 160 \
	    --batch-size 64 --workers $(WORKERS) --epochs 5 --peers --json $(DATA)/bench_loader.json

# What the published ffcv ImageNet data costs against the 256 px JPEG option: the demo
# images converted both ways (disk), then the loaders of each timed in alternating
# order, STORAGE_ROUNDS rounds per resolution (see BENCHMARKS.md; not part of CI)
STORAGE := $(DATA)/storage
STORAGE_ROUNDS ?= 3
STORAGE_RESOLUTIONS ?= 160 256
STORAGE_CFG_published := --preset rn50-published
STORAGE_CFG_jpg256 := --preset fast-256

# kept: make would delete them as intermediates of the val .betons
.PRECIOUS: $(STORAGE)/%/train.beton
$(STORAGE)/%/train.beton: $(SYNTH)/.done
	$(PY) write_datasets.py --cfg.split=train --cfg.data_dir=$(SYNTH)/train \
	    --cfg.write_path=$@ $(STORAGE_CFG_$*) --cfg.num_workers=$(WORKERS)

$(STORAGE)/%/val.beton: $(STORAGE)/%/train.beton
	$(PY) write_datasets.py --cfg.split=val --cfg.data_dir=$(SYNTH)/val \
	    --cfg.write_path=$@ $(STORAGE_CFG_$*) --cfg.num_workers=$(WORKERS) \
	    --cfg.classes=$<.classes.json

bench-storage: $(STORAGE)/published/val.beton $(STORAGE)/jpg256/val.beton
	ls -l $(STORAGE)/*/*.beton
	@# alternating order, so that neither layout always runs on the warmer machine
	for res in $(STORAGE_RESOLUTIONS); do for round in $$(seq $(STORAGE_ROUNDS)); do \
	  order="published jpg256"; [ $$((round % 2)) = 0 ] && order="jpg256 published"; \
	  for layout in $$order; do echo "== $$layout $$res px round $$round"; \
	    $(PY) -m ffcv_imagenet bench loader --beton $(STORAGE)/$$layout/train.beton \
	      --val-beton $(STORAGE)/$$layout/val.beton --folder $(SYNTH)/train \
	      --resolution $$res --batch-size 64 --workers $(WORKERS) --epochs 5 \
	      --json $(STORAGE)/$$layout.$$res.$$round.json || exit 1; \
	done; done; done

preview: $(BETONS)/train.beton
	$(PY) -m ffcv_imagenet preview --beton $(BETONS)/train.beton \
	    --out $(DATA)/train_batch.png --resolution 160 --count 32 --workers $(WORKERS)

# resume=auto: a finished run is found and not trained again; an interrupted one continues
train: $(BETONS)/val.beton
	$(PY) train_imagenet.py --config rn18_cpu_demo.yaml \
	    --data.train_dataset=$(BETONS)/train.beton --data.val_dataset=$(BETONS)/val.beton \
	    --data.num_workers=$(WORKERS) --logging.folder=$(DEMO_RUN) \
	    --checkpoint.resume=auto --logging.progress=0

# the trained model taken elsewhere: exported (each file checked against the checkpoint),
# the ONNX export scored on the val split, the .pt2 classifying one image of each class
EXPORTS := $(DEMO_RUN)/exports
use: train
	$(PY) -m ffcv_imagenet export $(DEMO_RUN) --format pt2 --out $(EXPORTS)/model.pt2
	$(PY) -m ffcv_imagenet export $(DEMO_RUN) --format onnx --out $(EXPORTS)/model.onnx
	$(PY) -m ffcv_imagenet evaluate $(EXPORTS)/model.onnx --val $(BETONS)/val.beton \
	    --workers $(WORKERS)
	$(PY) -m ffcv_imagenet predict $(EXPORTS)/model.pt2 \
	    $(wildcard $(SYNTH)/val/*/*_val_00000.JPEG) --topk 1

demo: install bench preview train use
	@echo "demo done: benchmark in $(DATA)/bench_loader.json, batch grid in" \
	    "$(DATA)/train_batch.png, training log and checkpoints in $(DEMO_RUN)," \
	    "exports in $(EXPORTS)"

# The main suite leaves out the tests marked gpu_image (the wheelhouse's), which the
# second environment runs: the wheelhouse is what a GPU node installs, with its versions.
# That environment installs beside the main suite where the disk holds both (see
# gpu-image-beside): its install mostly waits on downloads and the disk, so the two
# together take about a minute and a half less than one after the other. Its output is
# printed when the suite ends.
GPU_IMAGE_LOG := $(GPU_IMAGE_VENV).install.log
test: install
	@if [ "$$($(MAKE) -s --no-print-directory gpu-image-beside)" = yes ]; then \
	  echo "installing $(GPU_IMAGE_VENV) beside the main suite (output: $(GPU_IMAGE_LOG))"; \
	  $(MAKE) $(GPU_IMAGE_VENV)/.installed > $(GPU_IMAGE_LOG) 2>&1 & pid=$$!; fi; \
	FFCV_IMAGENET_WHEELHOUSE=$(LOCAL_WHEELS) $(PY) -m pytest -q -ra --durations=15 \
	    $(PYTEST_PARALLEL) -m 'not gpu_image' tests; status=$$?; \
	if [ -n "$$pid" ]; then \
	  wait $$pid; installed=$$?; echo "== $(GPU_IMAGE_VENV)'s install:"; cat $(GPU_IMAGE_LOG); \
	  [ $$installed = 0 ] || { echo "the install of $(GPU_IMAGE_VENV) failed" >&2; exit 1; }; fi; \
	exit $$status
	$(MAKE) room-for-gpu-image
	$(MAKE) test-gpu-image

# "yes" where the second environment can install beside the main suite: not installed
# yet, and GPU_IMAGE_ROOM_GB free plus 2 GB for the main suite's files (BENCHMARKS.md,
# "Test-suite time": both environments and the suite's files take 13 GB at their peak)
gpu-image-beside:
	@free=$$(df -Pk . | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	if [ ! -e $(GPU_IMAGE_VENV)/.installed ] && [ "$$free" -ge $$(( $(GPU_IMAGE_ROOM_GB) + 2 )) ]; \
	then echo yes; else echo no; fi

# In CI (CI=true), on a disk too small for the second environment beside the first, the
# first is removed once its suite has passed; elsewhere nothing is removed
room-for-gpu-image:
	@free=$$(df -Pk . | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	if [ "$$CI" = true ] && [ ! -e $(GPU_IMAGE_VENV)/.installed ] && \
	   [ "$$free" -lt $(GPU_IMAGE_ROOM_GB) ]; then \
	  echo "CI: $$free GB free, $(GPU_IMAGE_VENV) needs $(GPU_IMAGE_ROOM_GB) GB: removing $(VENV)"; \
	  rm -rf $(VENV); fi

# the tests of GPU_IMAGE_TESTS with a GPU image's versions
test-gpu-image: $(GPU_IMAGE_VENV)/.installed
	@# python -m pytest puts this checkout first on the path, so its sources are what the
	@# tests import: their C extension is built in place for this Python too
	$(GPU_IMAGE_PY) -W ignore -c 'from setuptools import setup; setup()' -q build_ext --inplace
	FFCV_IMAGENET_WHEELHOUSE=$(GPU_IMAGE_WHEELS) $(GPU_IMAGE_PY) -m pytest -q -ra \
	    $(PYTEST_PARALLEL) -m 'not slow or gpu_image' $(GPU_IMAGE_TESTS)

clean:
	rm -rf $(DATA) $(DEMO_RUN)
