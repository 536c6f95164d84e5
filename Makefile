# SparkOps. `make help` lists the targets.
SHELL := /bin/bash
SWIFT ?= swift
SECONDS ?= 60

# Debian packages the build, the tests and the polyglot clients need.
DEBIAN_PACKAGES := protobuf-compiler protobuf-c-compiler libprotobuf-c-dev libssl-dev libpq-dev \
	libhiredis-dev libsqlite3-dev pkg-config make gcc python3 python3-pip curl bubblewrap nodejs util-linux chromium

.PHONY: help deps build run run-distributed test proto proto-check clients fuzz-wire bench-wire bench-wire-counts bench-gateway bench-tools bench-policy bench-runs format clean

help:
	@echo "make deps         install missing Debian packages and Python modules"
	@echo "make build        build every executable"
	@echo "make run          run SparkOps in one process (SQLite) on http://localhost:8000"
	@echo "make run-distributed  each service its own process, on local PostgreSQL and Redis"
	@echo "make test         run every test (also on PostgreSQL and Redis when SPARKOPS_TEST_* are set)"
	@echo "make proto        regenerate Swift, C and Python code from proto/"
	@echo "make proto-check  fail if the generated code is out of date"
	@echo "make fuzz-wire    fuzz the SparkWire frame decoder and state machine (SECONDS=$(SECONDS))"
	@echo "make bench-wire   SparkWire against gRPC HTTP/2 and raw TLS, side by side"
	@echo "make bench-wire-counts  task enqueues, allocations, syscalls and context switches per SparkWire call (perf, root)"
	@echo "make bench-gateway  wrk against an authenticated read through the gateway (SQLite, PostgreSQL)"
	@echo "make bench-tools  python and http tool calls beside python3 and async-http-client, side by side"
	@echo "make bench-policy Evaluate beside a SparkWire echo; Reserve+Settle beside one UPDATE on PostgreSQL"
	@echo "make bench-runs   1,000 runs of 3 echo steps on SQLite and PostgreSQL beside Celery 5 on Redis, side by side"

# Installs only what is missing, with sudo when not root.
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi
	@python3 -c 'import google.protobuf' 2>/dev/null || python3 -m pip install -q -r clients/python/requirements.txt

build: deps
	$(SWIFT) build

# Everything in one process: SQLite and certificates under .sparkops, the API on :8000.
# RUN_ARGS passes options to `sparkops dev`, such as RUN_ARGS="--port 8080".
run: deps
	$(SWIFT) build --product sparkops
	$$($(SWIFT) build --show-bin-path)/sparkops dev $(RUN_ARGS)

run-distributed: deps
	deploy/local/run-distributed.sh

test: deps
	$(SWIFT) build --build-tests
	SWIFT="$(SWIFT)" scripts/test.sh

proto:
	scripts/proto-gen.sh

proto-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	scripts/proto-gen.sh "$$tmp" && \
	for dir in Sources/SparkProto/Generated clients/c/gen clients/python/gen docs/api tools/protoc-plugins/Sources/protoc-gen-sparkops/Generated; do \
		diff -r "$$tmp/$$dir" "$$dir" || { echo "$$dir is out of date with proto/: run make proto"; exit 1; }; \
	done && echo "generated code is in sync with proto/"

clients:
	$(MAKE) -C clients/c

# libFuzzer over the frame decoder and connection state machine, from the committed seed corpus.
# New inputs go to .build-fuzz/corpus; findings are written as crash-* files.
fuzz-wire:
	$(SWIFT) build --scratch-path .build-fuzz --product SparkWireFuzz \
		-Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DSPARKWIRE_FUZZ
	mkdir -p .build-fuzz/corpus
	SWIFT_BACKTRACE=enable=no .build-fuzz/debug/SparkWireFuzz .build-fuzz/corpus Tests/FuzzCorpus/wire \
		-max_total_time=$(SECONDS) -max_len=65536 -print_final_stats=1

bench-wire:
	cd Benchmarks && $(SWIFT) build -c release --product WireBenchmarks
	Benchmarks/.build/release/WireBenchmarks

bench-wire-counts:
	cd Benchmarks && $(SWIFT) build -c release --product WireBenchmarks
	scripts/wire-counts.sh

bench-gateway: deps
	scripts/bench-gateway.sh

bench-tools: deps
	cd Benchmarks && $(SWIFT) build -c release --product ToolBenchmarks
	Benchmarks/.build/release/ToolBenchmarks

bench-policy: deps
	cd Benchmarks && $(SWIFT) build -c release --product PolicyBenchmarks
	eval "$$(deploy/local/services.sh --test)" && Benchmarks/.build/release/PolicyBenchmarks

bench-runs: deps
	cd Benchmarks && $(SWIFT) build -c release --product RunBenchmarks
	eval "$$(deploy/local/services.sh --test)" && CELERY_BROKER_URL="$${SPARKOPS_TEST_REDIS_URL%/*}/15" Benchmarks/.build/release/RunBenchmarks

format:
	$(SWIFT) format --in-place --recursive Sources Tests Benchmarks/Sources

clean:
	rm -rf .build .build-fuzz .build-protoc Benchmarks/.build .build-bench
	$(MAKE) -C clients/c clean
