# Two commands on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run   set up .venv (pinned dependencies) and the dataset, then run pipeline.toml
#   make test  the same set-up, then the whole test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[onnx,openvino,coreml,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt exists; elsewhere the pipeline
# downloads it (or set data.path).
data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "apt-get not found: the pipeline will download Fashion-MNIST (or set data.path)"; fi

run: setup data
	$(VENV)/bin/manifold-edge run pipeline.toml

test: setup data
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python bench/loss_cost.py

clean:
	rm -rf $(VENV) runs
