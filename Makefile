# darkroom: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := bash

# uv is the one tool the project installs by hand; everything else comes from uv.lock.
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(shell python3 -c 'import sysconfig;print(sysconfig.get_path("scripts"))')/uv
endif
UV_FLAGS := --frozen --python python3
PYTEST_ARGS ?=
SCOPES ?= photos.read,photos.write,events.read,events.write,webhooks.manage
NAME ?= cli

.PHONY: help install run test test-faults lint fmt token bench-upload bench-chunked bench-tus bench-direct bench-import bench-floor bench-thumbnailing bench-repair bench-webhooks bench-s3 bench-archive compose-config asyncapi clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet 'uv>=0.9,<1'

.venv/.installed: uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml | $(UV)
	$(UV) sync $(UV_FLAGS) --all-packages
	@touch $@

# The npm tools of the tests and benchmarks (tus-js-client, @tus/server), from package-lock.json.
NPM := $(shell command -v npm 2>/dev/null)
node_modules/.installed: package.json package-lock.json
	@[ -n "$(NPM)" ] || { echo "npm (Node.js 20.19+) is required: apt-get install nodejs npm" >&2; exit 1; }
	$(NPM) ci --no-audit --no-fund
	@touch $@

# The guest page serves tus-js-client's browser build from the package (api/guests.py).
GUEST_TUS := services/ingest/src/darkroom_ingest/guest_page/tus.min.js
$(GUEST_TUS): node_modules/.installed
	cp node_modules/tus-js-client/dist/tus.min.js $@

install: .venv/.installed node_modules/.installed $(GUEST_TUS) ## Install the workspace into .venv and node_modules (from the lock files)

run: install ## Run the whole system (embedded servers unless AMQP_URL/MONGO_URL/S3_ENDPOINT_URL are set)
	.venv/bin/darkroom-dev

# Debian's chromium: the guest page is tested in it (tests/e2e/test_guest_page.py).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)

# Debian's prometheus has promtool: the alert rules are unit-tested with it (tests/deploy).
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	$(SUDO) apt-get install -y --no-install-recommends prometheus || ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus)

test: install $(CHROMIUM) $(PROMTOOL) ## Run the whole test suite (unit, integration, end to end, faults and abuse bounded, alert rules, the Helm chart)
	.venv/bin/pytest $(PYTEST_ARGS)

test-faults: install ## The fault suite with more load (hundreds of uploads); table in .data/faults-report.json
	FAULTS_FULL=1 .venv/bin/pytest -p no:cacheprovider tests/faults $(PYTEST_ARGS)

lint: install ## ruff and mypy --strict
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy services libs src

fmt: install ## Format and autofix
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

token: install ## Create an API token: make token SCOPES=photos.read,photos.write NAME=me [EVENT=slug-or-id]
	.venv/bin/darkroom token create --scopes $(SCOPES) --name $(NAME) $(if $(EVENT),--event $(EVENT))

bench-upload: install ## Benchmark batch uploads: API CPU-s/GiB, peak RSS, ratio to direct S3
	.venv/bin/python -m benchmarks.batch_upload

bench-chunked: install ## Benchmark chunked uploads (512 MiB and 2 GiB, 8 MiB chunks, 4 in parallel)
	.venv/bin/python -m benchmarks.chunked_upload

bench-tus: install ## Benchmark tus: darkroom vs @tus/server+@tus/s3-store vs chunked, CPU-s/GiB, peak RSS (BENCH_TUS_SIZES_MIB=256,1024)
	.venv/bin/python -m benchmarks.tus_upload

bench-direct: install ## Benchmark direct-to-S3 multipart uploads (1 GiB, 8 MiB parts, 4 at a time): API CPU-s/GiB, ratio to presigned PUTs without the API
	.venv/bin/python -m benchmarks.direct_upload

bench-import: install ## Benchmark S3 prefix imports: 1,000 objects of 1 MB, photos/s and API CPU-ms/photo vs a bare CopyObject loop
	.venv/bin/python -m benchmarks.bench_import

bench-thumbnailing: install ## Benchmark thumbnailing: 1,000 24 MP JPEGs through the service vs a bare pyvips loop
	.venv/bin/python -m benchmarks.thumbnailing

bench-repair: install ## Benchmark metadata repair over 10,000 photos with cleared dimensions
	.venv/bin/python -m benchmarks.repair

bench-webhooks: install ## Benchmark webhook delivery: backlog drain, 200 events/s, one endpoint of ten hanging
	.venv/bin/python -m benchmarks.webhooks

BENCH_ARCHIVE_GIB ?= 2

bench-archive: install ## Benchmark ZIP archives: 100 files, 2 GiB (BENCH_ARCHIVE_GIB=0.5), vs a bare read+multipart loop: MB/s, CPU-s/GiB, peak RSS
	.venv/bin/python -m benchmarks.archive --gib $(BENCH_ARCHIVE_GIB)

bench-s3: install ## S3 data path vs aiobotocore: client (and moto_server) CPU-ms per call, side by side
	.venv/bin/python -m benchmarks.s3_data_path

bench-floor: install ## What the bare stack costs per GiB (receive, forward to S3, + SHA-256)
	.venv/bin/python -m benchmarks.upload_floor

asyncapi: install ## Write docs/asyncapi.json (the messaging contract) from the payload models
	.venv/bin/python -m darkroom_kit.asyncapi --out docs/asyncapi.json

compose-config: ## Validate docker-compose.yml offline (docker compose, or Debian's docker-compose)
	@export RABBITMQ_PASSWORD=x MINIO_ROOT_PASSWORD=x GRAFANA_ADMIN_PASSWORD=x MEDIA_SIGNING_KEYS=x; \
	if docker compose version >/dev/null 2>&1; then docker compose -f docker-compose.yml config --quiet; \
	else docker-compose -f docker-compose.yml config -q; fi && echo "docker-compose.yml is valid"

clean: ## Remove .venv and .data
	rm -rf .venv .data
