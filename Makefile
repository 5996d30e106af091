# weitiao — the two commands a newcomer needs:
#   make demo   set everything up, then fine-tune a tiny model on the waimai reviews and evaluate it
#   make test   set everything up, then run every test (node's test runner and pytest)
# `make setup` is idempotent and quick when nothing changed (stamp files track the inputs).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# pip: never wait on an unreachable index (the local wheel store answers at once).
PIP_FLAGS ?= --retries 0 --disable-pip-version-check
export WEITIAO_PYTHON := $(CURDIR)/$(VPY)

.PHONY: setup demo test test-node test-engine test-distill typecheck bench bench-upload clean check-python browser malloc postgres

setup: node_modules/.stamp $(VENV)/.stamp dist/.stamp dist/web/index.html malloc

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found. Install Python 3.10+ (Debian/Ubuntu: apt-get install python3 python3-venv)," >&2; \
	  echo "       or point PYTHON=/path/to/python3 at one. 错误：未找到 python3，请先安装 Python 3.10 以上版本。" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || { \
	  echo "error: weitiao's engine needs Python >= 3.10, found $$($(PYTHON) --version)" >&2; exit 1; }

node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

$(VENV)/.stamp: engine/requirements.txt | check-python
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(PIP_FLAGS) -q -r engine/requirements.txt
	@touch $@

dist/.stamp: node_modules/.stamp $(shell find src -name '*.ts' -not -name '*.test.ts' 2>/dev/null) tsconfig.json
	npx tsc -p tsconfig.json
	@touch $@

# The web console (React + Vite), served by `weitiao serve` at /.
dist/web/index.html: node_modules/.stamp $(shell find web -type f -not -name '*.test.ts' 2>/dev/null)
	npx vite build --config web/vite.config.ts --logLevel warn

# Browser tests drive Debian's Chromium (never a browser a tool downloads); a CJK font renders Chinese.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi 'wqy\|noto.*cjk'; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium and a CJK font (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null); \
	  else \
	    echo "error: browser tests need chromium and fonts-wqy-microhei: sudo apt-get install chromium fonts-wqy-microhei" >&2; exit 1; \
	  fi; \
	fi

# tcmalloc: the engine preloads it when present (engine/weitiao_engine/allocator.py): ~1.5x CPU training speed
# at the same memory. Optional: without it (and without root to install it) the engine runs on glibc's malloc.
malloc:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libtcmalloc'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing tcmalloc (apt-get install libtcmalloc-minimal4)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) || \
	      echo "note: could not install libtcmalloc-minimal4; the engine will use glibc's malloc (slower on CPU)" >&2; \
	  else \
	    echo "note: for ~1.5x faster CPU training install tcmalloc: sudo apt-get install libtcmalloc-minimal4 / 建议安装 tcmalloc" >&2; \
	  fi; \
	fi

demo: setup
	bash scripts/demo.sh

typecheck: node_modules/.stamp
	npx tsc -p tsconfig.json --noEmit
	npx tsc -p web/tsconfig.json --noEmit
	npx tsc -p web/tsconfig.node.json --noEmit

test-engine: $(VENV)/.stamp
	cd engine && ../$(VPY) -m pytest -q -n auto --durations=15 tests

# The store and queue suites run a second time on PostgreSQL (a throwaway server per test process, started as an
# unprivileged user in a temp dir: src/testing/postgres.ts). Debian's package provides the server binaries.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing postgresql (apt-get) for the PostgreSQL store tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null); \
	  else \
	    echo "error: the PostgreSQL store tests need the server binaries: sudo apt-get install postgresql" >&2; exit 1; \
	  fi; \
	fi

test-node: setup browser postgres
	node scripts/run-node-tests.mjs
	node scripts/run-node-tests.mjs --postgres

test: setup typecheck test-engine test-node

# Distillation (issue 18): the demo's model, served by weitiao serve, labels 500 reviews; a student trained on
# those labels alone is evaluated on real labels. Minutes of CPU (more when .demo holds no model): not in `make test`.
test-distill: setup
	WEITIAO_DISTILL=1 node scripts/run-node-tests.mjs src/data/teacher/distill.e2e.test.ts

# Side-by-side speed benchmark (TRL SFTTrainer vs the engine); writes BENCHMARKS.md. Takes about 20 minutes on 2 quiet cores.
bench: setup
	$(VENV)/bin/pip install $(PIP_FLAGS) -q -r bench/requirements.txt
	$(VPY) bench/run.py

# Memory benchmark: a 500 MB chat JSONL uploaded (and checked) through `weitiao serve`; prints RSS growth and /health latency against the targets.
bench-upload: node_modules/.stamp
	node bench/upload_memory.mjs

clean:
	rm -rf dist node_modules $(VENV) .demo
