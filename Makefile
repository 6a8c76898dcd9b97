# Quick start: `make repro` (install + dvc repro on the embedded synthetic data), `make test` (install + pytest).
# uv resolves PyPI's own torch from uv.lock and ignores any CPU-only torch wheel in pip's find-links,
# which would break `import torchvision` (see README, "Install").
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Trust the system certificate store (which holds any site proxy CA), with or without SSL_CERT_FILE set.
export UV_SYSTEM_CERTS ?= 1

.PHONY: install test repro mlflow-ui clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) sync --frozen
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1
