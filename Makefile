# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   install, make synthetic data, convert it, benchmark the loader, save a
#               batch PNG, train ResNet-18 on it (the CPU demo recipe)
#   make test   install, run the whole test suite (what .ci/run calls)
# Both are idempotent: a second run reuses what is installed and generated.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
SYNTH := $(DATA)/synthetic
BETONS := $(DATA)/betons
DEMO_RUN ?= runs/rn18_cpu_demo
WORKERS ?= $(shell nproc)
APT_PACKAGES := libturbojpeg0-dev libopencv-dev pkg-config build-essential
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-packages bench preview train clean

install: $(VENV)/.installed

system-packages:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); }

$(VENV)/.installed: requirements.txt pyproject.toml
	$(MAKE) system-packages
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

$(SYNTH)/.done: | install
	$(PY) -m ffcv_imagenet synthetic --out $(SYNTH) --classes 10 \
	    --train-per-class 300 --val-per-class 50 --seed 0 --workers $(WORKERS)
	touch $@

$(BETONS)/train.beton: $(SYNTH)/.done
	$(PY) write_datasets.py --cfg.split=train --cfg.data_dir=$(SYNTH)/train \
	    --cfg.write_path=$@ --cfg.max_resolution=256 --cfg.num_workers=$(WORKERS)

$(BETONS)/val.beton: $(BETONS)/train.beton
	$(PY) write_datasets.py --cfg.split=val --cfg.data_dir=$(SYNTH)/val \
	    --cfg.write_path=$@ --cfg.max_resolution=256 --cfg.num_workers=$(WORKERS) \
	    --cfg.classes=$(BETONS)/train.beton.classes.json

bench: $(BETONS)/val.beton
	$(PY) -m ffcv_imagenet bench loader --beton $(BETONS)/train.beton \
	    --val-beton $(BETONS)/val.beton --folder $(SYNTH)/train --resolution 160 \
	    --batch-size 64 --workers $(WORKERS) --epochs 5 --json $(DATA)/bench_loader.json

preview: $(BETONS)/train.beton
	$(PY) -m ffcv_imagenet preview --beton $(BETONS)/train.beton \
	    --out $(DATA)/train_batch.png --resolution 160 --count 32 --workers $(WORKERS)

# resume=auto: a finished run is found and not trained again; an interrupted one continues
train: $(BETONS)/val.beton
	$(PY) train_imagenet.py --config rn18_cpu_demo.yaml \
	    --data.train_dataset=$(BETONS)/train.beton --data.val_dataset=$(BETONS)/val.beton \
	    --data.num_workers=$(WORKERS) --logging.folder=$(DEMO_RUN) \
	    --checkpoint.resume=auto --logging.progress=0

demo: install bench preview train
	@echo "demo done: benchmark in $(DATA)/bench_loader.json, batch grid in" \
	    "$(DATA)/train_batch.png, training log and checkpoints in $(DEMO_RUN)"

test: install
	$(PY) -m pytest -q -ra tests

clean:
	rm -rf $(DATA) $(DEMO_RUN)
