# `make demo` and `make test` each create .venv when missing and install the project into it.
# torch==2.13.0 is installed first and explicitly: on the project's CPU machines pip takes a local CPU
# wheel; elsewhere it is a normal wheel. Everything else comes from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-gpu lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[stream,mqtt,http,webrtc,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/omnizip demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The CUDA checks (tests marked `gpu`: plans on CUDA vs CPU, the stream, infer and bench on the GPU).
# They skip with the reason where CUDA is missing.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check omnizip omnizip_stream tests scripts
	$(VENV)/bin/mypy omnizip omnizip_stream

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
