# Two commands on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run   set up .venv (pinned dependencies) and the dataset, then run pipeline.toml
#   make test  the same set-up, then the whole test suite (make test-fast: without the tests marked slow)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data test-tools run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[onnx,openvino,coreml,executorch,litert,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt exists; elsewhere the pipeline
# downloads it (or set data.path).
data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "apt-get not found: the pipeline will download Fashion-MNIST (or set data.path)"; fi

# What the tests use beyond Python: openssh-server (the ssh device tests start their own sshd on
# 127.0.0.1; the system service the package starts under systemd is disabled again), adb, and
# chromium (report.html is rendered headless and screenshotted).
test-tools:
	@if [ -x /usr/sbin/sshd ] && command -v adb >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		had_sshd=$$([ -x /usr/sbin/sshd ] && echo yes); \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssh-server adb chromium && \
		if [ -z "$$had_sshd" ] && [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now -q ssh; fi; \
	else echo "apt-get not found: install OpenSSH's sshd, adb and chromium, or their tests are skipped"; fi

run: setup data
	$(VENV)/bin/manifold-edge run pipeline.toml

test: setup data test-tools
	$(VENV)/bin/python -m pytest -q

test-fast: setup data test-tools
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: setup data
	$(VENV)/bin/python bench/loss_cost.py
	$(VENV)/bin/python bench/quantization.py
	$(VENV)/bin/python bench/latency.py
	$(VENV)/bin/python bench/distill_throughput.py

clean:
	rm -rf $(VENV) runs
