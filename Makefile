# The README's two set-up commands: `make train-camvid` (main job) and `make test`.
PYTHON ?= python3
CAMVID ?= ../shared/data/camvid

.PHONY: install system-deps train-camvid test lint

# torch first, from the CPU build on these machines: a bare `torch` requirement would pull CUDA wheels.
install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"

# Main job: a short MaskMatch run on CamVid 1/8 (CPU, a few minutes), printing the val mIoU.
train-camvid: install
	$(PYTHON) -m maskmatch_hf.train --config examples/configs/camvid_quickstart.yaml \
		--dataset_name $(CAMVID) --labeled_ids $(CAMVID)/splits/1_8/labeled.txt \
		--unlabeled_ids $(CAMVID)/splits/1_8/unlabeled.txt

# The demo test screenshots the Gradio page with Debian's headless Chromium (sudo only when not root).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; \
	}

test: install system-deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
