# The two commands of README.md: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mer-installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

# torch, torchvision and torchaudio are pinned together in one pip call (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mer demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/store_read.py

clean:
	rm -rf demo-out bench-out .pytest_cache
