"""Shared pytest configuration of the test suite."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test that takes several seconds (deselect with -m 'not slow')"
    )
