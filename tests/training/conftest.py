"""A small synthetic benchmark for the end-to-end training tests, generated once per session."""
import pytest

from pscfast.data import synthetic


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_bench") / "bench"
    synthetic.generate(str(root), seed=1, classes=("snowman", "fish"), photos_per_class=4, sketches_per_photo=1,
                       test_photos_per_class=1, masks=False)
    return str(root)
