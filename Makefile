# ldm - build, test and install.  See README.md.
#
#   make                 build/ldmpack, build/ldmgen (and the CUDA backend when nvcc exists)
#   make test            build and run every test; prints "N passed, N failed"
#   make asan            the same tests under AddressSanitizer + UBSan (build-asan/)
#   make install PREFIX=/usr/local DESTDIR=
#   make CUDA=0          force a CPU-only build
#   make bench           the CPU benchmark (bench/run.sh): ldm fp32/bf16 next to the GEMM
#                        ceilings and the peers that are installed; a quiet machine, ~30 min
#   make fuzz            build the libFuzzer harnesses (clang, build-fuzz/) and fuzz each for
#                        FUZZ_SECONDS (default 60), one after the other; see tests/fuzz/README.md
#   make fuzz-ci         build them, run each over its committed corpus, then FUZZ_CI_SECONDS
#                        (default 4) of fuzzing each (what `make test` runs, tests/cli_fuzz.sh)

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
NVCC    ?= nvcc
PKGS    := libarchive zlib sqlite3 libpng jansson libutf8proc libjpeg

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(PKG_LIBS),)
ifneq ($(filter-out deps clean,$(or $(MAKECMDGOALS),all)),)
$(error pkg-config could not find: $(PKGS). Run scripts/install-deps.sh (or make deps))
endif
endif

OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Isrc $(PKG_CFLAGS) $(SANITIZE) \
           -DLDM_DATADIR='"$(PREFIX)/share/ldm"'
LDFLAGS += -fopenmp $(SANITIZE)
LDLIBS  += $(PKG_LIBS) -lm -lpthread

# CUDA: on when nvcc is found, unless CUDA=0.
ifeq ($(origin CUDA), undefined)
CUDA := $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
endif
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC) 2>/dev/null)))
ifeq ($(CUDA),1)
CFLAGS     += -DLDM_CUDA
CUDA_SRC   := $(wildcard cuda/*.cu)
CUDA_OBJ   := $(CUDA_SRC:cuda/%.cu=$(BUILD)/cuda/%.o)
# SASS for Turing, Ampere and Hopper, PTX for anything newer (JIT-compiled once).
NVCC_ARCH  ?= -gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 \
              -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS  ?= -O2 -std=c++17 -Isrc -Xcompiler -Wall,-Wextra $(NVCC_ARCH)
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart -lstdc++
LDLIBS     += $(CUDA_LIBS)
endif

# Layers, lowest first (src/README.md): each may include only the layers before it.
LAYERS  := core backend format model pipeline app
LIB_SRC := $(foreach l,$(LAYERS),$(wildcard src/$(l)/*.c))
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/schema_sql.o $(CUDA_OBJ)
CLI_SRC := $(filter-out %_main.c,$(wildcard src/cli/*.c))
CLI_OBJ := $(CLI_SRC:src/%.c=$(BUILD)/obj/%.o)
HDRS    := $(wildcard src/*/*.h)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
PROGS   := $(BUILD)/ldmpack $(BUILD)/ldmgen

.PHONY: all test asan install clean deps fuzz fuzz-build fuzz-ci
all: $(PROGS)

$(BUILD)/obj/%.o: src/%.c $(HDRS) | $(BUILD)/obj
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
# The SQL migrations in schema/ are compiled into the library.
$(BUILD)/obj/schema_sql.c: $(sort $(wildcard schema/*.sql)) scripts/embed-sql.sh | $(BUILD)/obj
	scripts/embed-sql.sh $(sort $(wildcard schema/*.sql)) > $@
$(BUILD)/obj/schema_sql.o: $(BUILD)/obj/schema_sql.c
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/cuda/%.o: cuda/%.cu $(HDRS) $(wildcard cuda/*.h) | $(BUILD)/cuda
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
$(BUILD)/libldm.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^
$(BUILD)/ldmpack: $(BUILD)/obj/cli/ldmpack_main.o $(CLI_OBJ) $(BUILD)/libldm.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/ldmgen: $(BUILD)/obj/cli/ldmgen_main.o $(CLI_OBJ) $(BUILD)/libldm.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/tests/%: tests/%.c tests/test.h tests/model_test_util.h $(BUILD)/libldm.a | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libldm.a $(LDFLAGS) $(LDLIBS) -o $@
$(BUILD)/obj $(BUILD)/cuda $(BUILD)/tests:
	mkdir -p $@

test: $(PROGS) $(TEST_BIN) $(BUILD)/tests/gpu_fullsize
	tests/run.sh $(BUILD)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 CUDA=0 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

# ---- Fuzzing: libFuzzer harnesses (tests/fuzz/fuzz_*.c), clang with ASan + UBSan.
# The library is compiled again into build-fuzz/ with coverage instrumentation and with
# tests/fuzz/fuzz_mmap.h forced in (file mappings become exact-size heap copies, so ASan
# sees any read past the end of a file).
FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_NAMES   := safetensors bundle png tokenizer config image record
FUZZ_FLAGS   := -O1 -g -std=c11 -D_GNU_SOURCE -DLDM_NO_CPU_BACKEND -Wall -Wextra -Isrc $(PKG_CFLAGS) \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# The harnesses need the dry backend only: the CPU backend (OpenMP, F16C builtins clang 14
# does not take) stays out.
FUZZ_SRC     := $(filter-out src/backend/ops_cpu.c,$(LIB_SRC))
FUZZ_OBJ     := $(FUZZ_SRC:src/%.c=$(FUZZ_BUILD)/obj/%.o) $(FUZZ_BUILD)/obj/schema_sql.o
FUZZ_BIN     := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/obj/%.o: src/%.c $(HDRS) tests/fuzz/fuzz_mmap.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -include tests/fuzz/fuzz_mmap.h -c $< -o $@
$(FUZZ_BUILD)/obj/schema_sql.c: $(sort $(wildcard schema/*.sql)) scripts/embed-sql.sh
	@mkdir -p $(dir $@)
	scripts/embed-sql.sh $(sort $(wildcard schema/*.sql)) > $@
$(FUZZ_BUILD)/obj/schema_sql.o: $(FUZZ_BUILD)/obj/schema_sql.c
	$(FUZZ_CC) $(FUZZ_FLAGS) -c $< -o $@
$(FUZZ_BUILD)/libldm.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^
$(FUZZ_BUILD)/fuzz_mmap.o: tests/fuzz/fuzz_mmap.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -c $< -o $@
$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h $(FUZZ_BUILD)/fuzz_mmap.o $(FUZZ_BUILD)/libldm.a
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $< $(FUZZ_BUILD)/fuzz_mmap.o $(FUZZ_BUILD)/libldm.a \
	    $(PKG_LIBS) -lm -lpthread -o $@

fuzz-build: $(FUZZ_BIN)

fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_NAMES)

fuzz-ci: $(PROGS)
	LDM_BUILD=$(BUILD) tests/cli_fuzz.sh

install: $(PROGS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/ldm
	install -m 755 $(PROGS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/*.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 644 schema/*.sql $(DESTDIR)$(PREFIX)/share/ldm/
	if [ -f bundle/default.ldmb ]; then install -m 644 bundle/default.ldmb $(DESTDIR)$(PREFIX)/share/ldm/; fi

deps:
	scripts/install-deps.sh

clean:
	rm -rf build build-asan build-fuzz

# Benchmarks (not tests): bench/run.sh, results in bench/RESULTS.md.  Needs a quiet machine.
# OpenBLAS only here: its sgemm is one of the ceilings the benchmark measures.
$(BUILD)/bench_gemm: bench/bench_gemm.c $(BUILD)/libldm.a
	$(CC) $(CFLAGS) $(shell pkg-config --cflags openblas) $< $(BUILD)/libldm.a $(LDFLAGS) $(LDLIBS) \
	    $(shell pkg-config --libs openblas) -o $@
.PHONY: bench
bench: $(PROGS) $(BUILD)/bench_gemm
	BUILD=$(BUILD) bench/run.sh
