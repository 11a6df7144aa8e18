# Two entry points: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo demo-captioner test test-cluster demo-digest install lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m acedata demo-data --out runs/demo/corpus
	$(PY) -m acedata run pipelines/demo.yaml --out runs/demo
	$(PY) -m acedata validate runs/demo
	$(PY) -m acedata contact-sheet runs/demo --out runs/demo/contact_sheets
	$(PY) -m acedata stats runs/demo --plot runs/demo/plots
	$(PY) -m acedata train model/configs/tiny.yaml --data runs/demo/assemble/lcu --out runs/demo/train --steps 80
	$(PY) -m acedata generate runs/demo/train --image runs/demo/corpus/chelsea/chelsea_0.jpg \
	  --instruction "turn {image} into a pencil sketch" --steps 20 --out runs/demo/sample.png
	@echo "demo output: runs/demo (contact sheets, plots, dataset card runs/demo/assemble/README.md, sample.png)"
	@echo "review the demo's instructions: $(PY) -m acedata review runs/demo add-user me --role admin && $(PY) -m acedata review runs/demo queue all --by stratified --overlap 0.1 && $(PY) -m acedata review runs/demo   # then open http://127.0.0.1:8765/"

# After `make demo`: train the instruction captioner on runs/demo's curated instructions, evaluate it,
# and relabel the demo's natural pairs with it (pipelines/captioner-loop.yaml).
demo-captioner: $(STAMP)
	$(PY) -m acedata run pipelines/captioner-loop.yaml --out runs/captioner-loop
	@echo "captioner: runs/captioner-loop/train_captioner/{train/eval/metrics.csv,model}; relabelled: runs/captioner-loop/relabel"

test: $(STAMP)
	bash .ci/system-deps.sh
	$(PY) -m pytest -q tests

# Rerun the full demo and compare every table's digest with tests/demo_digest.json.
demo-digest: $(STAMP)
	ACEDATA_DEMO_DIGEST=1 $(PY) -m pytest -q tests/test_determinism.py -k demo_digest

test-cluster: $(STAMP)
	$(PY) -m pytest -q tests/test_cluster_*.py

lint: $(STAMP)
	$(VENV)/bin/ruff check acedata model tests bench jobs

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
