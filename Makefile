# The two set-up commands of the README. Each installs everything it needs into
# a local virtual environment (.venv) first, so both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: studio test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[test]"
	touch $(STAMP)

## Install everything and open the studio with the Digits demo loaded and ready to train.
studio: $(STAMP)
	$(VENV)/bin/lora-studio studio --demo digits

## Install everything and run the whole test suite (no GPU, no display needed).
test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest
