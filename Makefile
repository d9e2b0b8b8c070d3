# erasure_pipeline: the two commands are `make demo` and `make test`.
PY ?= python
SUBJECTS ?= 2000

.PHONY: install demo example test test-fast dev check bench
install:
	$(PY) -m pip install -e ".[dev]"

demo: install
	erasure-pipeline demo --subjects $(SUBJECTS)

# make example NAME=single_table|five_tables: its data into its own project home, then every asset.
NAME ?= five_tables
EXAMPLE_ENV = ERASURE_PIPELINE_HOME=$(CURDIR)/.erasure_home/examples/$(NAME) ERASURE_PIPELINE_POLICY=$(CURDIR)/examples/$(NAME)/policy.yaml
example: install
	$(EXAMPLE_ENV) $(PY) examples/$(NAME)/generate.py
	$(EXAMPLE_ENV) erasure-pipeline materialize

# The whole suite, then its exactness, concurrency, crash and fault tests (marker `executor`) again on Dagster's
# multiprocess executor: shard steps of different shards at once, in their shards' pools; crashes and faults
# reach the step processes through erasure_pipeline_tests/crash_site (docs/ORCHESTRATION.md). Both on WORKERS
# pytest-xdist workers (worksteal: the longest tests take 1-1.5 min; each test has its own home, database
# and ports, so workers share nothing but the PostgreSQL server). WORKERS=0 runs in one process.
WORKERS ?= 2
test:
	$(PY) -m pytest -q -rs -n $(WORKERS) --dist worksteal --durations=15
	ERASURE_PIPELINE_TEST_EXECUTOR=multiprocess:2 $(PY) -m pytest -q -n $(WORKERS) --dist worksteal -m executor

# Load and validate the definitions as Dagster does, without starting anything.
check:
	dg check defs

test-fast:
	$(PY) -m pytest -q -m "not slow"

# Dagster's own project tooling (pyproject.toml [tool.dg]): the UI and daemon on the demo's instance
# (this folder's dagster.yaml: storage under .erasure_home/dagster, where the CLI keeps it too).
dev:
	DAGSTER_HOME=$(CURDIR) dg dev

# Each prints Markdown tables; benchmarks/RESULTS.md holds the latest with their commands (one sequential
# pass, ~45 min here; the 1 000 000-subject erasure_cost alone needs ~9 GiB of RAM).
bench:
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) -m benchmarks.erasure_cost --subjects 200000
	$(PY) -m benchmarks.erasure_cost --subjects 200000 --executor multiprocess:2
	$(PY) -m benchmarks.erasure_cost --subjects 1000000
	$(PY) -m benchmarks.build_memory --subjects 1000000
	$(PY) -m benchmarks.lake_layout --subjects 200000
	$(PY) -m benchmarks.qdrant_delete
	$(PY) -m benchmarks.sisa_accuracy
	$(PY) -m benchmarks.sensor_resolve --requests 10000
	$(PY) -m benchmarks.membership_audit
	$(PY) -m benchmarks.daemon_latency
	$(PY) -m benchmarks.run_mechanisms
	$(PY) -m benchmarks.cli_startup --runs 7
	$(PY) -m benchmarks.verify_batch
	$(PY) -m benchmarks.recipients_delivery
	$(PY) -m benchmarks.sealing_cost --subjects 200000
	$(PY) -m benchmarks.fill_cost --subjects 200000
	$(PY) -m benchmarks.pool_contention --pg-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres
	$(PY) -m benchmarks.superseded_cost --subjects 200000
	$(PY) -m benchmarks.staging_format --subjects 10000
	$(PY) -m benchmarks.build_pairs --base HEAD~1 --subjects 200000 --pairs 4
	$(PY) -m benchmarks.instance_storage --subjects 200000 --passes 2
	$(PY) -m benchmarks.erasure_pairs --base HEAD~1 --subjects 200000 --pairs 4
	$(PY) -m benchmarks.provenance_records --base HEAD~1 --subjects 200000 --pairs 2
