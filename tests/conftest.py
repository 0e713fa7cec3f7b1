"""Shared test configuration: markers used across the suites."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "coordinator(**settings): overrides of the integration coordinator's settings for one test",
    )
    config.addinivalue_line("markers", "integration: runs a real coordinator on a loopback port")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)
