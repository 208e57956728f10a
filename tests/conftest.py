"""Shared pytest configuration."""


def pytest_configure(config):
    # Slow tests still run in CI (`make test`); the marker lets developers deselect them with `-m "not slow"`.
    config.addinivalue_line("markers", "slow: long-running test (still part of CI)")
