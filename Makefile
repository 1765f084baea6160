# Two entry points for a newcomer: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs what it needs when missing. torch==2.13.0 goes in first and
# explicitly: any other torch spec would pull several GB of CUDA packages on this machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h) pyactor/_private/store_build.py

.PHONY: run test bench clean chromium

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q setuptools wheel cffi
	$(BIN)/pip install -q --no-build-isolation -e '.[all]'
	# Bytecode ahead of time: with PYTHONDONTWRITEBYTECODE set (as on this machine) an editable
	# install is otherwise compiled from source by every process, ~80 ms of each start-up.
	$(BIN)/python -m compileall -q pyactor rl tune
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m pyactor.cli microbenchmark --quick
	# The RL half: PPO on CartPole-v1 until the last 100 episodes average 475 (a few seconds).
	$(BIN)/python -m pyactor.cli rl train --algo PPO --env CartPole-v1 --seed 0 \
		--stop '{"episode_return_mean": 475, "env_steps_total": 300000}'

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

# The dashboard's browser test needs headless Chromium: installed from the system packages only
# when no Chromium binary is found (the script says why when it cannot; the test then skips).
chromium:
	@sh scripts/install_chromium.sh

bench: $(STAMP)
	$(BIN)/python bench/store_bench.py

clean:
	rm -rf build *.egg-info pyactor/_store_cffi*.so pyactor/_store_cffi.c
