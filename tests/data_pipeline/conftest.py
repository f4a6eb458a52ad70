"""A tiny synthetic benchmark generated once per test session (a few seconds on one core)."""
import pytest

from pscfast.data import synthetic

TINY = dict(seed=3, classes=("snowman", "fish", "car"), photos_per_class=3, sketches_per_photo=2,
            test_photos_per_class=1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    synthetic.generate(str(root), **TINY)
    return str(root)
