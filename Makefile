# The README's commands. Both create .venv/ in the repository root from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nsrom-installed
PROFILE ?= default
SEEDS   ?= 0,1,2

.PHONY: setup browser kernel run results test lab explore lint figures clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 10), "Python 3.10+ needed (3.11 tested)"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q -e '.[dev,crf]'
	touch $(STAMP)

kernel: setup
	$(PY) -m ipykernel install --user --name nsrom --display-name "Python (nsrom)" >/dev/null
	@echo "Jupyter kernel 'nsrom' registered for this venv."

run: setup kernel
	$(PY) -m nsrom_lib run --profile $(PROFILE) --run-dir runs/$(PROFILE)

# the stages through `results` once per seed into runs/$(PROFILE)/seed<k>/, then the summary
# over the seeds: runs/$(PROFILE)/summary.md, summary.json, summary.png
results: setup
	$(PY) -m nsrom_lib results --seeds $(SEEDS) --profile $(PROFILE)

# Debian's Chromium for the browser tests (installed when missing and apt-get can run as root;
# otherwise those tests skip and say why, or fail when CI is set)
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	    if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	        apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	    else echo "No /usr/bin/chromium and no root apt-get: the browser tests will skip."; fi; \
	fi

test: setup browser
	$(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab notebooks

# the threshold explorer as a web app (Voila) on 127.0.0.1: runs/default, else the newest
# finished run, else the quick run is built first; RUN=runs/x picks another run
RUN ?=
explore: setup
	$(PY) -m nsrom_lib.app $(if $(RUN),--run $(RUN))

figures: setup
	$(PY) -m nsrom_lib.viz pipeline docs/pipeline.png

lint: setup
	$(VENV)/bin/ruff check nsrom_lib tests notebooks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
