import numpy as np
import pytest


@pytest.fixture
def rng():
    """A seeded generator; tests never seed the global state."""
    return np.random.default_rng(20260421)
