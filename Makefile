# Set-up and entry points. `make run` and `make test` do everything a fresh machine needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIPELINE ?= fashion-dcgan
ARGS ?=

.PHONY: run test bench soak fuzz data

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

run: $(STAMP) data
	$(VENV)/bin/tapeline run $(PIPELINE) $(ARGS)

test: $(STAMP) data
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -q

bench: $(STAMP) data
	for b in $(filter-out benchmarks/soak.py benchmarks/fuzz.py benchmarks/fuzz_inputs.py,$(wildcard benchmarks/*.py)); do $(PY) $$b || exit 1; done

# Issue 11's resume soak: N random kill moments across the four pipelines (about a minute each).
N ?= 40
soak: $(STAMP) data
	$(PY) benchmarks/soak.py $(N) --markdown

# Seeded mutations of IDX files, JPEG bytes and paired folders through the data stages.
fuzz: $(STAMP)
	$(PY) benchmarks/fuzz.py --seed 17 --cases 210 --cli 4
