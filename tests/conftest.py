"""Shared pytest configuration and fixtures of the test suite."""
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test that takes several seconds (deselect with -m 'not slow')"
    )


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """The built-in shapes dataset, written once per test session to a temporary folder and
    registered as "ddetr_shapes_train" / "ddetr_shapes_val"."""
    from deformable_detr.data import register_shapes_datasets

    root = str(tmp_path_factory.mktemp("datasets") / "ddetr_shapes")
    register_shapes_datasets(root)
    return root
