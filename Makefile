# Two commands on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run   set up .venv (pinned dependencies) and the dataset, then run pipeline.toml
#   make test  the same set-up, then the whole test suite (make test-fast: without the tests marked slow)
PYTHON ?= python3
VENV := .venv
# e.g. --system-site-packages: .venv sees the system's packages, so an installed torch 2.14.1 (the CPU build) is kept
# instead of PyPI's Linux wheel and its 3.2 GB of CUDA libraries
VENV_ARGS ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data mediapipe test-tools arm64 run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[onnx,openvino,coreml,executorch,litert,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# MediaPipe in its own environment: its TFLite metadata writer (the .tflite in deploy folders) and its
# ImageClassifier (the test that MediaPipe takes such a file). MediaPipe 0.10.21 needs numpy 1.x, and the
# releases since ship without the module the writer imports. --no-deps: what the writer and the classifier
# import (MediaPipe's jax, sentencepiece and sounddevice serve other tasks).
MEDIAPIPE := $(VENV)/mediapipe
MEDIAPIPE_PINS := mediapipe==0.10.21 numpy==1.26.4 protobuf==4.25.9 flatbuffers==25.12.19 absl-py==2.5.1 \
	attrs==26.1.0 opencv-contrib-python==4.11.0.86 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 \
	fonttools==4.69.1 kiwisolver==1.5.1 packaging==26.4 pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0
MEDIAPIPE_STAMP := $(MEDIAPIPE)/.installed-$(shell echo $(MEDIAPIPE_PINS) | cksum | cut -d' ' -f1)

mediapipe: $(MEDIAPIPE_STAMP)

$(MEDIAPIPE_STAMP):
	$(PYTHON) -m venv $(MEDIAPIPE)
	$(MEDIAPIPE)/bin/pip install --quiet --no-deps $(MEDIAPIPE_PINS)
	rm -f $(MEDIAPIPE)/.installed-*
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

# The emulated arm64 device (docs/targets.md): a Debian bookworm arm64 root with the aarch64 builds of ONNX Runtime,
# LiteRT and ExecuTorch, built once outside the repo (as root: minutes, 0.5 GB); again, it only checks the versions.
MANIFOLD_EDGE_ARM64_ROOT ?= $(HOME)/.cache/manifold-edge/arm64

arm64: setup
	@if command -v qemu-aarch64-static >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 && \
		command -v update-binfmts >/dev/null 2>&1 && command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then :; \
	else $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq qemu-user-static debootstrap binfmt-support g++-aarch64-linux-gnu; fi
	$(SUDO) $(VENV)/bin/python -m targets.arm64_build --root $(MANIFOLD_EDGE_ARM64_ROOT)

run: setup data mediapipe
	$(VENV)/bin/manifold-edge run --config pipeline.toml

test: setup data test-tools mediapipe
	$(VENV)/bin/python -m pytest -q

test-fast: setup data test-tools mediapipe
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: setup data
	$(VENV)/bin/python bench/loss_cost.py
	$(VENV)/bin/python bench/quantization.py
	$(VENV)/bin/python bench/latency.py
	$(VENV)/bin/python bench/distill_throughput.py

clean:
	rm -rf $(VENV) runs
