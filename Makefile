# Two commands a new user needs: `make train` and `make test`. Both set up .venv first;
# set-up reinstalls only when pyproject.toml changed since the last install.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# albumentations' import otherwise calls the network
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup train test lint format tensorboard

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(p['dependencies'] + p['optional-dependencies']['dev']))" > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $(STAMP)

# make train ARGS="trainer.max_epochs=10 data=folder data.root=~/shots"
train: $(STAMP)
	$(PY) train.py $(ARGS)

# make test ARGS="-k ddp -x"
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir logs --samples_per_plugin images=1000
