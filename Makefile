# napari-vit3d: the two commands in the README are `make demo` and `make test` (lint, then the tests).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup system-deps venv clean screenshots bench

# Debian packages napari needs for an X server and OpenGL (only when root and apt exists).
SYSTEM_PACKAGES := xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libopengl0 libdbus-1-3 \
  libfontconfig1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xinput0

system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  if ! command -v Xvfb >/dev/null || ! dpkg -s libxcb-cursor0 libgl1-mesa-dri >/dev/null 2>&1; then \
	    echo "installing system packages for Xvfb/Mesa/Qt"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  fi; \
	elif ! command -v Xvfb >/dev/null; then \
	  echo "note: Xvfb not found; install: $(SYSTEM_PACKAGES)"; \
	fi

$(VPY):
	$(PY) -m venv $(VENV)

# torch first, so a CPU-only machine does not pull the CUDA build; a GPU user may preinstall their own.
$(STAMP): $(VPY) pyproject.toml
	$(VPY) -m pip install -q --upgrade pip
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_SPEC)
	$(VPY) -m pip install -q -e ".[all,testing]"
	touch $(STAMP)

setup: system-deps $(STAMP)

# ruff's settings live in pyproject.toml ([tool.ruff]); CI runs `make test`, so lint gates it.
lint: setup
	$(VPY) -m ruff check napari_vit3d tests benchmarks

test: setup lint
	QT_QPA_PLATFORM=xcb $(VPY) -m pytest -p xvfb tests

demo: setup
	@mkdir -p demo-output
	@if [ -n "$$DISPLAY" ] && [ -z "$$CI" ]; then \
	  $(VPY) -m napari_vit3d.demo; \
	else \
	  xvfb-run -a -s "-screen 0 1600x1000x24" $(VPY) -m napari_vit3d.demo --headless --out demo-output; \
	fi

screenshots: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VPY) docs/make_screenshots.py

bench: setup
	$(VPY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) build dist *.egg-info demo-output
