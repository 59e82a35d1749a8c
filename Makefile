# openvtep: `make run` (the main job, on the virtual board) and `make test` (all tests).
# Both install what is missing: Debian tools with apt-get, Python packages into .venv.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT_STAMP := .cache/apt.stamp
# Debian packages the tests and simulations need, as "command:package" pairs.
APT_TOOLS := iverilog:iverilog tshark:tshark ovs-ofctl:openvswitch-common ip:iproute2 \
	verilator:verilator
PYTEST_ARGS ?=
SOAK_ARGS ?= --frames 1000000 --report out/soak.json

.PHONY: run test test-slow formal formal-slow boards bench soak lint deps clean

run: deps
	$(BIN)/openvtep run

test: deps
	$(BIN)/python -m pytest -n auto -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 1; fi; exit $$rc

test-slow: deps
	$(BIN)/python -m pytest -n auto -m slow $(PYTEST_ARGS)

formal: deps
	$(BIN)/python -m pytest -n 2 tests/formal $(PYTEST_ARGS)

formal-slow: deps
	$(BIN)/python -m pytest -n 2 -m slow tests/formal $(PYTEST_ARGS)

boards: deps
	$(BIN)/python -m openvtep.boards.make_boards --jobs 2

bench: deps
	mkdir -p out
	$(BIN)/openvtep bench ref --json out/bench-ref.json --plot out/bench-ref.png

# 1,000,000 frames through the Verilator-simulated pipeline, checked against the reference.
soak: deps
	mkdir -p out
	$(BIN)/python -m openvtep.sim.soak $(SOAK_ARGS)

lint: deps
	$(BIN)/ruff check hdl host sim boards tests

deps: $(STAMP) $(APT_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,boards]'
	touch $@

$(APT_STAMP): Makefile
	@missing=""; for pair in $(APT_TOOLS); do \
		cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	mkdir -p $(dir $@) && touch $@

clean:
	rm -rf build .cache out sim_build
