# Set-up and entry points. `make run` and `make test` do everything a fresh machine needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIPELINE ?= fashion-dcgan
ARGS ?=

.PHONY: run test test-long bench soak fuzz data test-deps stack-up stack-down stack-status

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Offline Fashion-MNIST from Debian (only when missing; needs root, as on these machines).
data:
	@test -d /usr/share/datasets/fashion-mnist || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	    echo "note: could not install dataset-fashion-mnist; tapeline will need tfds or --set data.source"; \
	  fi; }

# What tests/test_stack.py starts for real: Debian's PostgreSQL, Chromium and its driver (as root, only
# when missing; without them those tests skip and say why).
test-deps:
	@missing=""; command -v pg_createcluster >/dev/null || missing="$$missing postgresql"; \
	  test -x /usr/bin/chromium || missing="$$missing chromium"; \
	  test -x /usr/bin/chromedriver || missing="$$missing chromium-driver"; \
	  if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null)) || \
	    echo "note: could not install$$missing; the stack tests will skip"; \
	  fi

# The production-like Prefect stack (docs/deployments.md): PostgreSQL, server, work pool, deployments, worker.
# STACK_ARGS e.g. "--interval 60 --only mnist-classifier --set train.epochs=1" or "--host 0.0.0.0".
STACK_ARGS ?=
stack-up: $(STAMP)
	$(PY) -m flows.stack up $(STACK_ARGS)

stack-down: $(STAMP)
	$(PY) -m flows.stack down $(STACK_ARGS)

stack-status: $(STAMP)
	$(PY) -m flows.stack status $(STACK_ARGS)

run: $(STAMP) data
	$(VENV)/bin/tapeline run $(PIPELINE) $(ARGS)

# TEST_WORKERS=1 runs the suite in one process (pytest -n 0); the default, 2, suits CI's two cores.
TEST_WORKERS ?= 2
test: $(STAMP) data test-deps
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -q -n $(if $(filter 1,$(TEST_WORKERS)),0,$(TEST_WORKERS)) --dist loadfile

# What is too long for the default suite (kills under MirroredStrategy, ...): pytest -m long.
test-long: $(STAMP) data test-deps
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -q -m long

bench: $(STAMP) data
	for b in $(filter-out benchmarks/soak.py benchmarks/fuzz.py benchmarks/fuzz_inputs.py,$(wildcard benchmarks/*.py)); do $(PY) $$b || exit 1; done

# Issue 11's resume soak: N random kill moments across the four pipelines (about a minute each).
N ?= 40
soak: $(STAMP) data
	$(PY) benchmarks/soak.py $(N) --markdown

# Seeded mutations of IDX files, JPEG bytes and paired folders through the data stages.
fuzz: $(STAMP)
	$(PY) benchmarks/fuzz.py --seed 17 --cases 210 --cli 4
