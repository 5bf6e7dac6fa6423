# The two commands of README.md: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mer-installed

.PHONY: demo test portable bench venv clean

venv: $(STAMP)

# torch, torchvision and torchaudio are pinned together in one pip call (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	# MTCNN face detector (weights inside the wheel); --no-deps: its own pins would replace torch
	$(PY) -m pip install -q --no-deps 'facenet-pytorch==2.6.0'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mer demo --out demo-out

# Two worker processes (pytest-xdist), one per core; tests/conftest.py groups the modules that share
# an expensive fixture and gives every worker one math thread. Most of the suite's time is
# single-threaded (importing torch/transformers in each `mer` subprocess), so two at once halve it.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The tests whose figures depend most on the machine's float results, with one torch thread and
# with the default; then `taskset -c 0 make test` once (see README, "Tests").
PORTABLE := tests/test_extractors_hf.py::test_reduced_precision_matches_float32 \
	tests/test_label_shift.py::test_known_shift_on_real_features tests/test_cli_basic.py::test_demo
portable: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PORTABLE)
	$(PY) -m pytest -q $(PORTABLE)

bench: $(STAMP)
	$(PY) benchmarks/store_read.py

clean:
	rm -rf demo-out bench-out .pytest_cache
