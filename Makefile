# The two set-up commands (see README): `make run` and `make test`. Each installs what is
# missing (Debian packages, through tools/install-deps.sh), configures, builds and goes on.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_GEN  := $(shell command -v ninja >/dev/null 2>&1 && echo "-G Ninja")

.PHONY: all deps build run test asan-test bench ci clean

all: build

deps:
	@bash tools/install-deps.sh

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/moesim run scenarios/quickstart.yaml --out $(BUILD)/quickstart

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Everything again under AddressSanitizer + UndefinedBehaviorSanitizer (CI runs this too).
asan-test: deps
	cmake -S . -B $(ASAN_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DMOESIM_SANITIZE=ON -DMOESIM_KERNELS=OFF -DMOESIM_MPI=OFF
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS)

bench: build
	./$(BUILD)/moesim-bench-hold
	./$(BUILD)/moesim-bench-flows
	./$(BUILD)/moesim-bench-place
	rm -f $(BUILD)/bench-sweep.csv && ./$(BUILD)/moesim sweep tools/bench-sweep.yaml --out $(BUILD)/bench-sweep.csv

ci: test asan-test

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
