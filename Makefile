# The two commands of the README. Each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/anbn-rule-extrapolation
# JAX devices the demo splits the CPU into (its seeds are sharded over them)
CPU_DEVICES ?= 2

.PHONY: demo test test-slow bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/formal-lm inspect anbn
	$(BIN)/formal-lm run experiments/anbn-rule-extrapolation.toml --out $(OUT) \
		--cpu-devices $(CPU_DEVICES)
	@echo "report: $(OUT)/report.md"

test: $(BIN)/.installed
	$(BIN)/pytest -n 2 -q

test-slow: $(BIN)/.installed
	$(BIN)/pytest -n 2 -q -m slow

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_languages.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
