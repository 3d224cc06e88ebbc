# README's two commands: `make demo` (set up, run the built-in sample) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geoseg-installed

.PHONY: install demo test test-all bench lock docs docs-check

# the compiled kernel (geoseg/results/_zonal.c) is built in place by pip install -e: rebuilt when it changes
$(STAMP): pyproject.toml geoseg/results/_zonal.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,baseline,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/geoseg demo -o demo-output --overwrite

# mypy (strict, settings in pyproject.toml) first: about 40 s of CPU from cold, 1 s with .mypy_cache;
# then lint-imports: the layers in pyproject's [tool.importlinter] (no import climbs, no circle).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(MAKE) docs-check
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m ""

# The documentation site (mkdocs.yml, docs/): `make docs` serves it at http://127.0.0.1:8000;
# `make docs-check` builds it with --strict into site/ (ignored), offline, in about 5 s.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

docs-check: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

bench: $(STAMP)
	$(BIN)/python benchmarks/predict.py

# Pin the runtime dependencies of the container images from this environment.
# moto[server] (the tests' S3 server) and what only it needs; boto3 and its own dependencies stay.
MOTO_PACKAGES := moto|Flask|flask-cors|Werkzeug|itsdangerous|blinker|antlr4-python3-runtime|aws-xray-sdk|cfn-lint|cffi|pycparser|cryptography|docker|graphql-core|joserfc|jsonpatch|jsonpath-ng|jsonpointer|jsonschema|openapi-|pathable|lazy-object-proxy|py-partiql-parser|pydantic-settings|python-dotenv|referencing|rpds-py|regex|requests|responses|rfc3339-validator|xmltodict|wrapt|charset-normalizer
DEV_PACKAGES := geoseg|hadolint|hypothesis|iniconfig|pluggy|pytest|ruff|rio-cogeo|morecantile|pydantic|annotated-types|typing-inspection|scikit-learn|joblib|threadpoolctl|nvidia-|cuda-|triton|Pygments|pyarrow|lazy-importer|mypy|mypy_extensions|types-PyYAML|ast-serialize|librt|pathspec|exactextract|$(MOTO_PACKAGES)
lock: $(STAMP)
	{ head -3 docker/requirements.lock; $(BIN)/pip freeze --exclude-editable | grep -Ev '^(-e|#)' | grep -Ev '^($(DEV_PACKAGES))'; } > docker/requirements.lock.new
	mv docker/requirements.lock.new docker/requirements.lock
