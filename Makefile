# `make train` and `make test` work on a fresh clone: the environment is created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.splml-installed
# Extra Hydra overrides for `make train`, e.g. make train ARGS="loss=full labels=full"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test bench bench-methods bench-retrieval clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) -m splml.train $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Benchmarks write their tables into experiments/ (finished runs are reused when re-run).
bench: install
	$(PY) experiments/methods/bench_machinery.py
	$(PY) experiments/synthetic/run_baselines.py
	$(PY) experiments/data/bench_reader.py

# The method comparison sweep (hours on a 2-core CPU; resumable).
bench-methods: install
	$(PY) experiments/methods/run_quality.py

# The retrieval comparison sweep (MACL vs SupCon, Jaccard-SupCon, MulSupCon; resumable).
bench-retrieval: install
	$(PY) experiments/retrieval/run_benchmark.py --jobs 2

clean:
	rm -rf logs .pytest_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
