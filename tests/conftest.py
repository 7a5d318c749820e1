from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
FIXTURE_NAMES = ("PE-Core-T16-384", "PE-Spatial-T16-512")


def fixture_checkpoint(name: str) -> Path:
    return FIXTURES / f"{name}_s0.pt"


def fixture_outputs(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}_s0.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(autouse=True, scope="session")
def _offline_hub():
    """Tests never reach the network: hub look-ups answer from the cache alone."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
