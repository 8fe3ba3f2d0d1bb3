# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all bench eyepacs256 browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[explain,export,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m retinopathy.demo

# Installs Debian's chromium + chromedriver for the browser test when missing and apt is usable (root).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will skip"; \
	  else echo "note: chromium missing and apt unusable; the browser test will skip"; fi; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest

test-all: $(STAMP) browser
	$(PY) -m pytest -m ''

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Issue 7: the recipe, the lab's recipe and the ablation on ../shared/data/eyepacs-256 (about 2 h on 2 CPU cores;
# re-running resumes and skips finished runs), then the reports.
eyepacs256: $(STAMP)
	$(PY) -m retinopathy experiment configs/eyepacs256.yaml
	$(PY) -m retinopathy experiment configs/eyepacs256-lab.yaml
	$(PY) -m retinopathy experiment configs/eyepacs256-ablation.yaml
	$(PY) -m retinopathy report runs/eyepacs256 runs/eyepacs256-lab --out reports/eyepacs256
	$(PY) -m retinopathy report runs/eyepacs256-ablation --out reports/eyepacs256-ablation

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
