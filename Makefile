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
	      || echo "warning: could not install chromium; the browser test will $$([ "$${REQUIRE_BROWSER:-}" = 1 ] && echo "fail (REQUIRE_BROWSER=1), not ")skip"; \
	  else echo "note: chromium missing and apt unusable; the browser test will $$([ "$${REQUIRE_BROWSER:-}" = 1 ] && echo "fail (REQUIRE_BROWSER=1), not ")skip"; fi; \
	fi

# pytest-xdist workers for `make test` (each with one torch thread); WORKERS=0 runs the tests in one process
WORKERS ?= 2

test: $(STAMP) browser
	$(PY) -m pytest -n $(WORKERS)

test-all: $(STAMP) browser
	$(PY) -m pytest -n $(WORKERS) -m ''

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Issue 7: the recipe, the lab's recipe, the ablation and the recipe on two more splits and two more model
# seeds, on ../shared/data/eyepacs-256: about 6 h on 2 CPU cores with native bf16 (measured: recipe 51 min and
# lab 47 min at 72 epochs, ablation 53 min; each split or seed trains the recipe), more without bf16 (AVX2 only;
# eyepacs256-96px, the recipe at 96 px for such CPUs: 64 min there);
# re-running resumes and skips finished runs.
SHARED ?= $(or $(RETINOPATHY_SHARED_DATA),../shared/data)
eyepacs256: $(STAMP)
	$(PY) -m retinopathy experiment configs/eyepacs256.yaml --data $(SHARED)/eyepacs-256
	$(PY) -m retinopathy experiment configs/eyepacs256-lab.yaml --data $(SHARED)/eyepacs-256
	$(PY) -m retinopathy experiment configs/eyepacs256-ablation.yaml --data $(SHARED)/eyepacs-256
	$(PY) -m retinopathy experiment configs/eyepacs256-splits.yaml --data $(SHARED)/eyepacs-256
	$(PY) -m retinopathy experiment configs/eyepacs256-seeds.yaml --data $(SHARED)/eyepacs-256
	$(PY) -m retinopathy experiment configs/eyepacs256-96px.yaml --data $(SHARED)/eyepacs-256
	$(PY) -m retinopathy report runs/eyepacs256 runs/eyepacs256-lab runs/eyepacs256-96px --out reports/eyepacs256
	$(PY) -m retinopathy report runs/eyepacs256-ablation --out reports/eyepacs256-ablation
	$(PY) -m retinopathy report runs/eyepacs256 runs/eyepacs256-splits runs/eyepacs256-seeds --out reports/eyepacs256-splits

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
