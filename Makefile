# atpd - one entry point: make, make run, make test, make bench, sanitizer builds.
#
#   make            bin/atpd and bin/atpctl (release: -O2, jemalloc)
#   make deps       installs the Debian packages the build and tests need
#   make run        builds, starts atpd on 127.0.0.1:8080 with a demo catalogue
#   make test       unit tests, sanitizer runs (ASan+UBSan, TSan), black-box tests
#   make bench      micro-benchmarks and the HTTP benchmarks against the peers
#   make fuzz       the libFuzzer harnesses, time-boxed (FUZZ_SECONDS)
#   make format     clang-format in place; make format-check fails on a diff

CC       ?= cc
CLANG    ?= clang
BUILD    := build
DEPS     := $(BUILD)/deps
# llhttp 8.1's C sources come from Debian's node-llhttp, either installed or
# unpacked by scripts/deps.sh into the ignored build tree.
# Decided without looking into build/deps, which make deps fills only after
# this Makefile is read on a fresh clone.
LLHTTP_DIR := $(if $(wildcard /usr/share/llhttp/llhttp.c),/usr/share/llhttp,$(DEPS)/usr/share/llhttp)
LLHTTP_INC := $(if $(wildcard /usr/share/include/llhttp/llhttp.h),/usr/share/include/llhttp,$(DEPS)/usr/share/include/llhttp)
LLHTTP_SRC := llhttp.c api.c http.c

JSON_LIBS ?= -lyajl
LIBS     := -luv -lmsgpackc $(JSON_LIBS) -lhiredis -lcurl -lpthread -lm
# libcrypto: the Shopify webhooks' HMAC-SHA256 (src/flows/shopify_hmac.c only).
LIBS     += -lcrypto
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CSTD     := -std=c11 -D_GNU_SOURCE
INC      := -Iinclude -I$(LLHTTP_INC)
# -mprfchw: the engine prefetches lines it is about to CAS with write intent
# (prefetchw), so they arrive owned instead of shared and then upgraded, one
# more round trip to the core that wrote them last. CPUs without it take the
# instruction as a no-op.
ARCH_FLAGS := $(if $(filter x86_64,$(shell uname -m)),-mprfchw)
CFLAGS_release := -O2 -g $(ARCH_FLAGS)
CFLAGS_asan    := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
CFLAGS_tsan    := -O1 -g -fsanitize=thread
LDFLAGS_release := -ljemalloc
LDFLAGS_asan    := -fsanitize=address,undefined
LDFLAGS_tsan    := -fsanitize=thread

# One folder a layer (README, "Layout"): base < engine < store, flows < app <
# cmd, with codec and http beside the engine. scripts/check-layers.sh holds
# every folder to what its layer may include.
LAYERS    := base engine codec http store flows app cmd
SRC_ALL   := $(sort $(foreach l,$(LAYERS),$(wildcard src/$(l)/*.c)))
SRC_MAINS := src/cmd/atpd.c src/cmd/atpctl.c
# atpctl's own files (its libcurl client, output, import): linked into
# bin/atpctl only. atpd links libcurl for the Shopify push (src/flows/
# http_client.c) and libcrypto for the webhooks' HMAC.
SRC_CTL   := $(sort $(wildcard src/cmd/ctl_*.c))
CTL_LIBS  := -lcurl
SRC_LIB   := $(filter-out $(SRC_MAINS) $(SRC_CTL),$(SRC_ALL))
# The engine and base build into a library of their own: the engine's tests
# and bench_engine link it alone, so the linker proves the engine needs no
# third-party library (and scripts/check-layers.sh that it calls no I/O).
SRC_ENGINE := $(sort $(wildcard src/base/*.c src/engine/*.c))
# tests/unit/<folder>/test_<module>.c mirrors src/<folder>/.
UNIT_SRC   := $(sort $(wildcard tests/unit/*/test_*.c))
UNIT_NAMES := $(patsubst tests/unit/%.c,%,$(UNIT_SRC))
# Tests of base and engine link the engine library alone.
ENGINE_TEST_NAMES := $(filter base/% engine/%,$(UNIT_NAMES))
UNIT_HDRS  := tests/unit/test.h $(wildcard tests/unit/*/*.h)

# objects per variant: $(call objs,variant)
objs = $(patsubst src/%.c,$(BUILD)/$(1)/obj/%.o,$(SRC_LIB)) \
       $(patsubst %.c,$(BUILD)/$(1)/llhttp/%.o,$(LLHTTP_SRC))
engine_objs = $(patsubst src/%.c,$(BUILD)/$(1)/obj/%.o,$(SRC_ENGINE))
engine_lib  = $(BUILD)/$(1)/libatp_engine.a
HDRS := $(wildcard include/atp/*.h src/*/*.h)

# Objects reached only through pattern rules are not intermediates to delete.
.SECONDARY:

.PHONY: all deps run test check-prefetch check-layers unit unit-asan unit-tsan blackbox fuzz bench format format-check clean
all: bin/atpd bin/atpctl

deps:
	@scripts/deps.sh
$(LLHTTP_DIR)/%.c:
	@scripts/deps.sh

# --- objects ---------------------------------------------------------------
define variant_rules
$(BUILD)/$(1)/obj/%.o: src/%.c $(HDRS) | $(BUILD)/$(1)/llhttp
	@mkdir -p $$(dir $$@)
	$$(CC) $(CSTD) $(WARN) $(CFLAGS_$(1)) $(INC) -MMD -c $$< -o $$@
$(BUILD)/$(1)/llhttp/%.o: $(LLHTTP_DIR)/%.c | $(BUILD)/$(1)/llhttp
	$$(CC) -std=c11 -O2 -g $(CFLAGS_$(1)) -w -I$(LLHTTP_INC) -c $$< -o $$@
$(BUILD)/$(1)/llhttp:
	@mkdir -p $$@
$(call engine_lib,$(1)): $(call engine_objs,$(1))
	@rm -f $$@
	ar rcs $$@ $$^
$(foreach t,$(ENGINE_TEST_NAMES),$(BUILD)/$(1)/tests/$(t)): $(BUILD)/$(1)/tests/%: tests/unit/%.c $(UNIT_HDRS) $(call engine_lib,$(1))
	@mkdir -p $$(dir $$@)
	$$(CC) $(CSTD) $(WARN) $(CFLAGS_$(1)) $(INC) -Itests/unit $$< $(call engine_lib,$(1)) -o $$@ -lpthread -lm $(LDFLAGS_$(1))
$(BUILD)/$(1)/tests/%: tests/unit/%.c $(UNIT_HDRS) $(call objs,$(1))
	@mkdir -p $$(dir $$@)
	$$(CC) $(CSTD) $(WARN) $(CFLAGS_$(1)) $(INC) -Itests/unit $$< $(call objs,$(1)) -o $$@ $(LIBS) $(LDFLAGS_$(1))
endef
$(foreach v,release asan tsan,$(eval $(call variant_rules,$(v))))

bin/atpd: src/cmd/atpd.c $(call objs,release)
	@mkdir -p bin
	$(CC) $(CSTD) $(WARN) $(CFLAGS_release) $(INC) $^ -o $@ $(LIBS) $(LDFLAGS_release)
bin/atpctl: src/cmd/atpctl.c $(patsubst src/%.c,$(BUILD)/release/obj/%.o,$(SRC_CTL)) $(call objs,release)
	@mkdir -p bin
	$(CC) $(CSTD) $(WARN) $(CFLAGS_release) $(INC) $^ -o $@ $(LIBS) $(CTL_LIBS) $(LDFLAGS_release)
bin/atpd-asan: src/cmd/atpd.c $(call objs,asan)
	@mkdir -p bin
	$(CC) $(CSTD) $(WARN) $(CFLAGS_asan) $(INC) $^ -o $@ $(LIBS) $(LDFLAGS_asan)
# ThreadSanitizer's atpd: make test runs the durability module against it
# (tests/run.sh blackbox-tsan).
bin/atpd-tsan: src/cmd/atpd.c $(call objs,tsan)
	@mkdir -p bin
	$(CC) $(CSTD) $(WARN) $(CFLAGS_tsan) $(INC) $^ -o $@ $(LIBS) $(LDFLAGS_tsan)

# --- run -------------------------------------------------------------------
run: deps all
	@scripts/run-demo.sh

# --- tests -----------------------------------------------------------------
# Each suite prints "N passed, N failed" as its last line; tests/run.sh runs
# them all, sums the counts and prints the total as the last line.
UNIT_BINS_release := $(addprefix $(BUILD)/release/tests/,$(UNIT_NAMES))
UNIT_BINS_asan    := $(addprefix $(BUILD)/asan/tests/,$(UNIT_NAMES))
# Under TSan: the stress tests and the journal's group commit from several threads.
TSAN_NAMES        := $(patsubst tests/unit/%.c,%,$(sort $(wildcard tests/unit/*/test_*stress*.c))) store/test_journal
# ... and the Shopify push's figures read while it starts.
TSAN_NAMES        += flows/test_shopify_push
UNIT_BINS_tsan    := $(addprefix $(BUILD)/tsan/tests/,$(TSAN_NAMES))

test: deps all check-layers check-prefetch bin/atpd-asan bin/atpd-tsan $(UNIT_BINS_release) $(UNIT_BINS_asan) $(UNIT_BINS_tsan)
	@tests/run.sh

# The compiler kept every prefetch the sources ask for (scripts/check-prefetch.sh).
check-prefetch: $(call objs,release)
	@scripts/check-prefetch.sh

# Every folder includes only what its layer may (scripts/check-layers.sh).
check-layers: $(call engine_objs,release)
	@scripts/check-layers.sh

unit: $(UNIT_BINS_release)
	@tests/run.sh unit
unit-asan: $(UNIT_BINS_asan)
	@tests/run.sh asan
unit-tsan: $(UNIT_BINS_tsan)
	@tests/run.sh tsan
blackbox: all bin/atpd-asan
	@tests/run.sh blackbox

# --- fuzz (clang + libclang-rt-14-dev) --------------------------------------
FUZZ_SECONDS ?= 60
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS  := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
$(BUILD)/fuzz/%: tests/fuzz/%.c $(SRC_LIB) $(HDRS)
	@mkdir -p $(dir $@)
	$(CLANG) $(CSTD) $(WARN) $(FUZZ_FLAGS) $(INC) $< $(SRC_LIB) $(addprefix $(LLHTTP_DIR)/,$(LLHTTP_SRC)) -o $@ $(LIBS)
fuzz: $(FUZZ_BINS)
	@tests/run.sh fuzz $(FUZZ_SECONDS)

# --- bench -----------------------------------------------------------------
BENCH_SRC  := $(sort $(wildcard bench/bench_*.c))
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/release/bench/%,$(BENCH_SRC))
$(BUILD)/release/bench/%: bench/%.c $(call objs,release)
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(CFLAGS_release) $(INC) $< $(call objs,release) -o $@ $(LIBS) $(LDFLAGS_release)
# bench_engine links the engine library alone, as the engine's tests do.
$(BUILD)/release/bench/bench_engine: bench/bench_engine.c $(call engine_lib,release)
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(CFLAGS_release) $(INC) $< $(call engine_lib,release) -o $@ -lpthread -lm $(LDFLAGS_release)
# bench_json compares jansson with cJSON (linked) and json-c (dlopen'd: its
# json_object_get clashes with jansson's).
$(BUILD)/release/bench/bench_json: LIBS += -ljansson -lcjson
# make test builds the benchmarks too, so an internal API change cannot leave
# them broken until someone runs make bench.
test: $(BENCH_BINS)
bench: deps all $(BENCH_BINS)
	@bench/run.sh

# --- housekeeping ------------------------------------------------------------
FORMAT_FILES := $(wildcard src/*/*.c include/atp/*.h tests/unit/*.h tests/unit/*/*.c tests/unit/*/*.h tests/fuzz/*.c bench/*.c)
format:
	clang-format -i $(FORMAT_FILES)
format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)
clean:
	rm -rf $(BUILD)/release $(BUILD)/asan $(BUILD)/tsan $(BUILD)/fuzz bin

-include $(wildcard $(BUILD)/*/obj/*/*.d)
