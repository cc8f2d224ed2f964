# sagecast: `make stage1 && make stage2` runs the whole chain on the synthetic sky; `make test` tests it.
# All generated files go under $(RUNS) (default runs/). Set PYTHON to choose the interpreter for the venv.

RUNS ?= runs
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Every step (its command, its completion record) is declared once in sagecast_pipeline.steps; a target runs
# the steps whose record is absent (`$(PY) -m sagecast_pipeline stage1 --runs $(RUNS) --print` lists them).
# The quick default (sagecast_pipeline.steps.SYNTHETIC_ARGS, PREPARE_ARGS): one node, 4 whole local days
# (>= 1 day each for train/val/test), 5-minute cadence, small images, 64-pixel prepared images. Override on
# the command line, e.g. `make data SYNTH_ARGS="--days 7"`; STAGE1_ARGS / STAGE2_ARGS add key=value overrides.
SYNTH_ARGS ?=
PREP_ARGS ?=
STAGE1_ARGS ?=
STAGE2_ARGS ?=
# A make value as one shell word (its single quotes escaped); sagecast_pipeline splits it like the shell would.
quote = '$(subst ','\'',$(1))'
PIPELINE = $(PY) -m sagecast_pipeline --runs $(call quote,$(RUNS)) \
	$(if $(SYNTH_ARGS),--synthetic-args $(call quote,$(SYNTH_ARGS))) \
	$(if $(PREP_ARGS),--prepare-args $(call quote,$(PREP_ARGS))) \
	--stage1-args $(call quote,$(STAGE1_ARGS)) --stage2-args $(call quote,$(STAGE2_ARGS))

.PHONY: setup data stage1 stage2 test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

data stage1 stage2: | $(STAMP)
	$(PIPELINE) $@

# One math thread per test process unless OMP_NUM_THREADS is set: the tests run tiny models, several of them as
# parallel processes (Slurm, gloo ranks), where two threads per process on two cores only contend (BENCHMARKS.md).
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.run_all --out BENCHMARKS.md

clean:
	rm -rf $(RUNS)

# DETR vs JEPA with 95 % intervals: 64 synthetic days (40 train / 3 val / 21 test), one stage-1 run, both variants x 2 seeds, the
# report on the test split and on a held-out sky (docs/stage2.md "Comparing the variants"). Resumable: rerun to continue.
COMPARE_ARGS ?=
.PHONY: compare
compare: | $(STAMP)
	$(PY) -m sagecast_pipeline.compare --out $(RUNS)/compare $(COMPARE_ARGS)
