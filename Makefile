# videomill: `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: env test test-fast demo bench realset calibrate clean

env: $(VENV)/.installed

# uv resolves and installs the stack (torch, ray, prefect, ...) several times faster than pip.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	touch $@

test: env
	$(BIN)/python -m pytest -q

# The inner loop: everything but the end-to-end tests that start Ray, Prefect or torchrun.
test-fast: env
	$(BIN)/python -m pytest -q -m "not slow"

demo: env
	$(BIN)/videomill samples $(DEMO)/inputs
	$(BIN)/videomill run $(DEMO)/inputs --out $(DEMO)/out --profile tiny
	@echo "manifest: $(DEMO)/out/manifest  clips: $(DEMO)/out/clips  report: $(DEMO)/out/report.html"

bench: env
	$(BIN)/python bench/cpu_stages.py

# The real-footage development set (needs Debian's opencv-doc: apt-get install opencv-doc),
# curated with the defaults and measured against its labels: per tag precision and recall.
REALSET ?= build/realset
realset: env
	$(BIN)/python bench/realset.py $(REALSET)

calibrate: realset
	$(BIN)/videomill run $(REALSET) --out build/realset-run --executor local --config bench/realset_run.toml
	$(BIN)/videomill calibrate build/realset-run --labels tests/data/realset_labels.csv

clean:
	rm -rf $(DEMO) .pytest_cache
