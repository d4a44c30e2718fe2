# One-command setup, tests and demo. Run as root (or with the apt packages already installed).
PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
# CPU build by default; for CUDA see README (install torch first, then `make install TORCH_SPEC=`).
TORCH_SPEC ?= torch==2.13.0
# what the scripts need (audio I/O, test sound); the tests also need a browser (the web UI test), a CJK font and a
# sound server (the microphone path of realtime_transcribe.py): make demo installs only the first list
APT_CORE   := espeak-ng sox ffmpeg libsndfile1
APT_TEST   := chromium fonts-wqy-zenhei libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins
APT_PKGS   ?= $(APT_CORE) $(APT_TEST)
PYTEST_ARGS ?=

.PHONY: help install install-core apt test test-fast demo gpu-check clean

help:
	@echo "make install    create .venv and install everything (apt packages too when run as root)"
	@echo "make test       install, then run the whole test suite (what CI runs)"
	@echo "make test-fast  run the tests not marked slow"
	@echo "                (both take PYTEST_ARGS, e.g. make test PYTEST_ARGS=\"-q tests/test_text.py\")"
	@echo "make demo       fine-tune whisper-base on the demo corpus, merge, evaluate (CPU: 3-7 min on 2 cores)"
	@echo "make gpu-check  on a GPU machine: CUDA tests, memory table, short fine-tune (tools/gpu_check.py)"

apt:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	  missing=""; for c in espeak-ng sox ffmpeg; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "not a Debian/Ubuntu system and missing:$$missing (install with brew, dnf, …)"; exit 1; \
	  fi; \
	  echo "not a Debian/Ubuntu system: espeak-ng, sox and ffmpeg found;" \
	    "the tests' extras (chromium, a CJK font, PulseAudio) are not checked"; \
	  exit 0; \
	fi; \
	missing=""; for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing apt packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(MAKE) apt APT_PKGS="$(APT_CORE)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

install: apt $(VENV)/.installed

install-core: $(VENV)/.installed

# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
test: install
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; fi; exit $$rc

demo: install-core
	$(PY) tools/demo.py

# on a GPU machine: the .venv's Python when there is one (make install), else $(PYTHON) with its own torch (no
# internet); see tools/gpu_check.py for the wheels to carry
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) tools/gpu_check.py --out gpu_check

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
