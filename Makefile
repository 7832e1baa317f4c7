# Everything runs inside .venv, made from scratch when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench demo-model lock clean browser

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11)"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check volumes models workers service tests deploy
	$(BIN)/ruff check volumes models workers service tests deploy
	$(BIN)/mypy volumes models workers service

# The browser tests (tests/integration/test_viewing.py) drive Debian's Chromium; installed here
# where missing (CI runs as root; elsewhere through sudo) rather than skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m service.demo

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_inference.py

# Re-trains the shipped demo checkpoint (models/weights/demo_unet3d.pth.tar) reproducibly on CPU:
# a kind: training job through pytc run, scored by the inference engine.
demo-model: $(STAMP)
	$(BIN)/python -m service.demo.model --out models/weights/demo_unet3d.pth.tar

# constraints.txt: the runtime dependencies, direct or not, at the versions installed in .venv (the
# ones the tests passed with); the Docker image installs with it. Run after `make test` passes.
lock: $(STAMP)
	$(BIN)/python deploy/lock.py constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
