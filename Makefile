# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Both install into .venv/ first; the install is skipped when requirements are unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MINUTES ?= 13
PYTEST_ARGS ?=

.PHONY: install demo test test-slow clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==24.2"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(PY) tools/demo.py --minutes $(MINUTES)

test: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q tests -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
