# Two commands for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install demo test bench clean

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

# When make started: `make test` ends with its wall time from here (the install included), pass or fail.
STARTED := $(shell date +%s)

# The unit tests and those that start processes, as two pytest runs side by side (scripts/test.py).
test: $(INSTALLED)
	@$(BIN)/python scripts/test.py $(PYTEST_ARGS); status=$$?; took=$$(( $$(date +%s) - $(STARTED) )); \
	echo "make test: $$took s ($$(( took / 60 )) min $$(( took % 60 )) s) of wall time, install included; exit status $$status"; \
	exit $$status

bench: $(INSTALLED)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .demo .pytest_cache *.egg-info
