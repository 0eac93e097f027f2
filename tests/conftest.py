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


@pytest.fixture(autouse=True)
def _restore_loggers():
    """Scripts run in-process (demo.main, train_net.cli) call Detectron2's setup_logger, which
    gives these loggers handlers bound to the test's captured stream and stops their propagation;
    later tests would then log into a closed stream and caplog would see nothing."""
    import logging

    names = ("deformable_detr", "detectron2", "d2", "fvcore")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    yield
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
