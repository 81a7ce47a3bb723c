# deepeverest -- hand-written Makefile.
#   make            the daemon, build/deepeverestd
#   make check      every test: Check unit suites, shim test, integration tests
#   make unit       the Check unit suites only;  make integration  the shim
#                   suite and the integration tests only
#   make asan       the same suites built and run under ASan + UBSan (build-asan/)
#   make browser-test  the explorer page in headless Chromium
#   make validate   the OpenAPI document (and manifests) checked offline
#   make lint       no compiler warning, cppcheck clean
#   make bench      benchmarks (scripts/bench.sh)
#   make demo       install what is missing, build, start a demo daemon
#   make clean
# TORCH_DIR=/path/to/libtorch builds against another LibTorch root (e.g. a CUDA
# one from a PyTorch wheel: its include/ and lib/); default is Debian's.

SHELL   := /bin/bash
CC      ?= gcc
CXX     ?= g++
BUILD   ?= build
OPT     ?= -O2
SAN     ?=
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wshadow -Wno-unused-parameter \
               -Iproto -Istorage -Iserver -Iserver/engine -Iserver/builder -Iserver/http -Iserver/coord -Ishim $(SAN)
CXXFLAGS_BASE := -std=c++17 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wno-unused-parameter -Ishim $(SAN)

CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lm -lrt -lpthread)

TORCH_DIR ?=
ifeq ($(TORCH_DIR),)
  TORCH_CXXFLAGS :=
  TORCH_LIBS := -ltorch_cpu -lc10
else
  TORCH_CXXFLAGS := -I$(TORCH_DIR)/include -I$(TORCH_DIR)/include/torch/csrc/api/include \
                    -D_GLIBCXX_USE_CXX11_ABI=$(shell test -f $(TORCH_DIR)/../torch/_C*.so && echo 1 || echo 1)
  # --no-as-needed keeps libtorch_cuda linked, so the CUDA backend registers.
  TORCH_LIBS := -L$(TORCH_DIR)/lib -Wl,-rpath,$(TORCH_DIR)/lib -Wl,--no-as-needed \
                $(shell test -f $(TORCH_DIR)/lib/libtorch_cuda.so && echo -ltorch_cuda -lc10_cuda) \
                -ltorch -ltorch_cpu -lc10 -Wl,--as-needed
endif

LIBS := -lmicrohttpd -ljansson -llmdb -lpng -lz -lpthread -lm -ldl

PROTO_SRC   := proto/jspec.c proto/proto.c
STORAGE_SRC := storage/store.c storage/dsread.c
ENGINE_SRC  := $(wildcard server/engine/*.c)
SERVER_SRC  := $(wildcard server/*.c server/builder/*.c server/http/*.c server/coord/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
PROTO_OBJ   := $(call obj,$(PROTO_SRC))
STORAGE_OBJ := $(call obj,$(STORAGE_SRC))
ENGINE_OBJ  := $(call obj,$(ENGINE_SRC))
SERVER_OBJ  := $(call obj,$(SERVER_SRC))
SHIM_OBJ    := $(BUILD)/shim/shim.o
OPENAPI_OBJ := $(BUILD)/gen/openapi.o

DAEMON := $(BUILD)/deepeverestd
UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
SHIM_TEST  := $(BUILD)/tests/shim_test
STORE_TOOL := $(BUILD)/tests/store_tool

.PHONY: all check unit integration asan bench demo clean deps fuzz browser-test validate lint
all: $(DAEMON)

HEADERS := $(wildcard */*.h server/*/*.h)

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CHECK_CFLAGS) -c $< -o $@

$(SHIM_OBJ): shim/shim.cpp shim/shim.h
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_BASE) $(TORCH_CXXFLAGS) -c $< -o $@

# The OpenAPI document is served from the binary: its bytes as a C array.
$(BUILD)/gen/openapi.c: server/http/openapi.json
	@mkdir -p $(dir $@)
	@{ echo '#include <stddef.h>'; echo 'const unsigned char api_openapi_doc[] = {'; \
	   od -An -v -tx1 $< | sed -e 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	   echo '};'; echo 'const size_t api_openapi_len = sizeof api_openapi_doc;'; } > $@

$(OPENAPI_OBJ): $(BUILD)/gen/openapi.c
	$(CC) $(CFLAGS_BASE) -c $< -o $@

$(DAEMON): $(SERVER_OBJ) $(ENGINE_OBJ) $(PROTO_OBJ) $(STORAGE_OBJ) $(SHIM_OBJ) $(OPENAPI_OBJ)
	$(CXX) $(SAN) -o $@ $^ $(TORCH_LIBS) $(LIBS)

# Unit suites link no torch (fast, valgrind-able); each links only the modules it tests.
TEST_DEPS_test_proto  := $(PROTO_OBJ)
TEST_DEPS_test_dsread := $(BUILD)/storage/dsread.o
TEST_DEPS_test_store  := $(BUILD)/storage/store.o
TEST_DEPS_test_npi    := $(BUILD)/server/engine/npi.o
TEST_DEPS_test_engine := $(ENGINE_OBJ)
TEST_DEPS_test_pool   := $(BUILD)/server/engine/pool.o
TEST_DEPS_test_cache  := $(BUILD)/server/cache.o
TEST_DEPS_test_thumb  := $(BUILD)/server/thumb.o
TEST_DEPS_test_builder := $(BUILD)/server/builder/builder_core.o $(BUILD)/server/engine/npi.o
TEST_DEPS_test_stream := $(BUILD)/server/builder/builder_stream.o $(BUILD)/server/engine/npi.o
TEST_DEPS_test_shape  := $(BUILD)/server/builder/shape.o $(BUILD)/server/engine/npi.o
TEST_DEPS_test_eager  := $(BUILD)/server/builder/eager.o

.SECONDEXPANSION:
$(BUILD)/tests/%: tests/unit/%.c $$(TEST_DEPS_$$*) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CHECK_CFLAGS) -Itests/unit -o $@ $< $(TEST_DEPS_$*) $(CHECK_LIBS) $(LIBS)

# Integration tests look into the store with it (tests/tools/store_tool.c).
$(STORE_TOOL): tests/tools/store_tool.c $(BUILD)/storage/store.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -o $@ $^ -llmdb

$(SHIM_TEST): tests/shim_test.c $(SHIM_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -std=c11 -D_GNU_SOURCE -g -Ishim $(CHECK_CFLAGS) -c tests/shim_test.c -o $@.o
	$(CXX) $(SAN) -o $@ $@.o $(SHIM_OBJ) $(TORCH_LIBS) $(CHECK_LIBS) -ljansson -lz -lpthread -lm -ldl

deps:
	bash scripts/install-deps.sh

unit: $(UNIT_TESTS)
	@bash tests/run_all.sh $(BUILD) unit

integration: $(DAEMON) $(SHIM_TEST) $(STORE_TOOL)
	@bash tests/run_all.sh $(BUILD) integration

# The README's test command: sets up (packages), builds, runs every suite.
check: deps
	@$(MAKE) --no-print-directory all $(UNIT_TESTS) $(SHIM_TEST) $(STORE_TOOL)
	@bash tests/run_all.sh $(BUILD)

asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    build-asan/deepeverestd $(patsubst $(BUILD)/%,build-asan/%,$(UNIT_TESTS)) build-asan/tests/shim_test \
	    build-asan/tests/store_tool
	@ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	    bash tests/run_all.sh build-asan

# The explorer in headless Chromium against a real daemon, then through a
# coordinator over 3 shards (playwright-core from npm into
# tests/browser/node_modules). Screenshots: tests/out/browser/.
browser-test: all
	bash scripts/install-deps.sh browser
	bash tests/browser/run.sh $(BUILD)
	DE_SHARDS=3 bash tests/browser/run.sh $(BUILD)

# No compiler warning (-Werror) and no cppcheck finding; the findings that
# are false positives are suppressed where they stand, with the reason.
lint:
	bash scripts/install-deps.sh lint
	@$(MAKE) --no-print-directory BUILD=build-lint OPT=-O2 CC="$(CC) -Werror" CXX="$(CXX) -Werror" build-lint/deepeverestd
	cppcheck --enable=warning,performance,portability --inline-suppr --error-exitcode=1 -q --library=scripts/cppcheck-jansson.cfg \
	    -Iproto -Istorage -Iserver -Iserver/engine -Iserver/builder -Iserver/http -Iserver/coord -Ishim server storage proto shim

# Offline validation of the project's documents with maintained npm
# packages (tests/tools/package.json): the OpenAPI document, and the
# Kubernetes manifests: every overlay of deploy/k8s rendered by kubectl's
# kustomize (NAME:cpu|gpu, how its shards are meant to run), each object
# checked against the Kubernetes schemas (kubernetes-models) and the
# project's invariants (tests/tools/validate_k8s.mjs), the examples against
# the schemas; then --self-test shows that mutated manifests are rejected.
validate:
	bash scripts/install-deps.sh node
	@cd tests/tools && { [ -d node_modules/@apidevtools ] && [ -d node_modules/kubernetes-models ] && \
	    [ -d node_modules/yaml ] || npm ci --no-audit --no-fund >/dev/null; }
	node tests/tools/validate_openapi.mjs
	@command -v kubectl >/dev/null || { echo "validate: kubectl (1.27 or later, with kustomize) is needed to render deploy/k8s" >&2; exit 1; }
	@mkdir -p tests/out/k8s; set -e; specs="cpu-dev:cpu gpu:gpu"; args=""; \
	for d in deploy/k8s/overlays/*/; do \
	  case " $$specs " in *" $$(basename $$d):"*) ;; \
	    *) echo "validate: overlay $$d is not in the validate target's list (NAME:cpu|gpu)" >&2; exit 1;; esac; \
	done; \
	for spec in $$specs; do \
	  o=$${spec%%:*}; \
	  kubectl kustomize deploy/k8s/overlays/$$o > tests/out/k8s/$$o.yaml || \
	    { echo "validate: kubectl kustomize deploy/k8s/overlays/$$o failed" >&2; exit 1; }; \
	  echo "k8s: rendered deploy/k8s/overlays/$$o -> tests/out/k8s/$$o.yaml ($$(grep -c '^kind:' tests/out/k8s/$$o.yaml) objects)"; \
	  args="$$args --$${spec##*:} tests/out/k8s/$$o.yaml"; \
	done; \
	node tests/tools/validate_k8s.mjs $$args --schema-only deploy/k8s/examples/*.yaml; \
	node tests/tools/validate_k8s.mjs --self-test $$args

# libFuzzer (clang) over every parser that reads outside bytes; FUZZ_SECONDS
# each (default 60). New corpus entries go to build-fuzz/corpus, the seeds
# in tests/fuzz/corpus stay as committed.
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iproto -Istorage -Iserver -Iserver/http
FUZZERS := proto dsread route
FUZZ_SRC_proto  := proto/jspec.c proto/proto.c
FUZZ_SRC_dsread := storage/dsread.c
FUZZ_SRC_route  := server/http/route.c proto/jspec.c proto/proto.c
fuzz:
	bash scripts/install-deps.sh fuzz
	@mkdir -p build-fuzz
	@for f in $(FUZZERS); do \
	  case $$f in proto) src="$(FUZZ_SRC_proto)"; libs=-ljansson;; dsread) src="$(FUZZ_SRC_dsread)"; libs=-lz;; \
	              route) src="$(FUZZ_SRC_route)"; libs=-ljansson;; esac; \
	  clang $(FUZZ_CFLAGS) -o build-fuzz/fuzz_$$f tests/fuzz/fuzz_$$f.c $$src $$libs || exit 1; \
	  mkdir -p build-fuzz/corpus/$$f; \
	  echo "== fuzz_$$f ($(FUZZ_SECONDS) s)"; \
	  build-fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	      build-fuzz/corpus/$$f tests/fuzz/corpus/$$f 2>&1 | grep -E "stat::number_of_executed_units|ERROR|SUMMARY|crash-" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

bench: all
	bash scripts/bench.sh

demo: deps
	@$(MAKE) --no-print-directory all
	bash scripts/demo.sh

clean:
	rm -rf build build-asan build-fuzz build-lint
