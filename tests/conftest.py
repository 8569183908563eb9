"""Fixtures shared by several test files, and the check for the test-only torchattacks.

Plain helper functions live in ``_helpers.py``. torchattacks (the reference implementation the
cross-check files compare against) is installed by ``scripts/setup.sh`` with ``--no-deps``, not
by the ``test`` extra; a test asks for it through the ``torchattacks`` fixture. When such a test
is selected and torchattacks cannot be imported, the run stops before any test with ONE line
saying what to install: a missing reference must fail loudly, never skip silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _helpers import TORCHATTACKS_HINT, single_thread, train_prototype_cnn
from torch import nn


def _import_torchattacks() -> ModuleType | str:
    """The module, or the one-line reason it cannot be imported."""
    try:
        return importlib.import_module("torchattacks")
    except ImportError as exc:  # not installed, or installed against an incompatible torch
        return TORCHATTACKS_HINT.format(error=exc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop the run with one line when a selected test needs torchattacks and it is missing."""
    if not any("torchattacks" in getattr(item, "fixturenames", ()) for item in items):
        return
    found = _import_torchattacks()
    if isinstance(found, str):
        raise pytest.UsageError(found)


@pytest.fixture(scope="session")
def torchattacks() -> ModuleType:
    """The torchattacks module (checked at collection; this fails, too, if it is missing)."""
    found = _import_torchattacks()
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    return found


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """A module that uses this (``pytestmark = pytest.mark.usefixtures("one_thread")``) runs
    single-threaded; see :func:`_helpers.single_thread`."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained on prototype data (seed 0) and test samples it classifies correctly.

    Shared by the minimum-norm and Square attack files: the attacks leave models untouched
    (both files check it), so one training serves them all.
    """
    with single_thread():
        return train_prototype_cnn(0)


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SmallCNN trained 2 epochs on sklearn's digits by ``robustact train`` (the command
    line's checkpoint folder, ``final/``): what the evaluate and shard CLI tests evaluate."""
    from typer.testing import CliRunner

    from robustact.cli import app

    out = tmp_path_factory.mktemp("digits-ckpt") / "m"
    res = CliRunner().invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                                   "--epochs", "2", "--optimizer", "adam", "--lr", "0.003",
                                   "--batch-size", "64", "--out", str(out), "--no-progress",
                                   "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out / "final"
