"""The examples in the packages' docstrings run as written (they are what a reader copies first)."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts)
                 for package in ("metrics_core", "sweep", "analysis") for path in (ROOT / package).rglob("*.py")
                 if ">>>" in path.read_text())


def test_examples_are_found():
    assert {"metrics_core.convnets", "sweep.plan.costs"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
