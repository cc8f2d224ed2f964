# sagecast: `make stage1 && make stage2` runs the whole chain on the synthetic sky; `make test` tests it.
# All generated files go under $(RUNS) (default runs/). Set PYTHON to choose the interpreter for the venv.

RUNS ?= runs
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The quick default: one node, 4 whole local days (>= 1 day each for train/val/test), 5-minute cadence,
# small images. Override on the command line, e.g. `make data SYNTH_ARGS="--days 7"`.
SYNTH_ARGS ?= --nodes W056 --start 2023-05-18 --days 4 --interval-min 5 --seed 0 --size small
PREP_ARGS ?= --size 64
STAGE1_ARGS ?=
STAGE2_ARGS ?=

.PHONY: setup data stage1 stage2 test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

$(RUNS)/raw/.complete: | $(STAMP)
	$(BIN)/sagecast-synthetic --out $(RUNS)/raw $(SYNTH_ARGS)
	touch $@

$(RUNS)/prepared/index.parquet: $(RUNS)/raw/.complete
	$(BIN)/sagecast-prepare --raw $(RUNS)/raw --out $(RUNS)/prepared $(PREP_ARGS)

data: $(RUNS)/prepared/index.parquet

stage1: data
	$(BIN)/sagecast-stage1-train --preset quick prepared=$(RUNS)/prepared run_dir=$(RUNS)/stage1 $(STAGE1_ARGS)
	$(BIN)/sagecast-stage1-export --run $(RUNS)/stage1
	$(BIN)/sagecast-stage1-evaluate --run $(RUNS)/stage1

stage2: | $(STAMP)
	@test -f $(RUNS)/stage1/embeddings.parquet || { echo "no $(RUNS)/stage1/embeddings.parquet: run 'make stage1' first"; exit 2; }
	$(BIN)/sagecast-stage2-train --variant detr --preset quick stage1_run=$(RUNS)/stage1 run_dir=$(RUNS)/stage2/detr $(STAGE2_ARGS)
	$(BIN)/sagecast-stage2-train --variant jepa --preset quick stage1_run=$(RUNS)/stage1 run_dir=$(RUNS)/stage2/jepa $(STAGE2_ARGS)
	$(BIN)/sagecast-stage2-evaluate --stage1-run $(RUNS)/stage1 --runs $(RUNS)/stage2/detr $(RUNS)/stage2/jepa --out $(RUNS)/stage2 --raw $(RUNS)/raw
	$(BIN)/sagecast-report --runs $(RUNS)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.run_all --out BENCHMARKS.md

clean:
	rm -rf $(RUNS)

# DETR vs JEPA with 95 % intervals: >= 20 synthetic days, one stage-1 run, both variants x 3 seeds, the
# report on the test split and on a held-out sky (README "Comparing the variants"). Resumable: rerun to continue.
COMPARE_ARGS ?=
.PHONY: compare
compare: | $(STAMP)
	$(BIN)/sagecast-compare --out $(RUNS)/compare $(COMPARE_ARGS)
