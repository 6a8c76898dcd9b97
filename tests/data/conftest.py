"""Shared fixtures for the data tests: the default synthetic datasets, generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from reid.data.synthetic import MSMT17SynthConfig, Vehicle1MSynthConfig, write_msmt17, write_vehicle1m


@pytest.fixture(scope="session")
def default_msmt17(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``MSMT17_V1`` folder written with the default :class:`MSMT17SynthConfig` (read-only use)."""
    return write_msmt17(tmp_path_factory.mktemp("synth_msmt17"), MSMT17SynthConfig())


@pytest.fixture(scope="session")
def default_vehicle1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``Vehicle-1M`` folder written with the default :class:`Vehicle1MSynthConfig` (read-only use)."""
    return write_vehicle1m(tmp_path_factory.mktemp("synth_vehicle1m"), Vehicle1MSynthConfig())
