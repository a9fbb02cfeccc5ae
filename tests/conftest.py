"""Shared fixtures."""

import pytest

from rlqa.cluster import remaining


@pytest.fixture
def leftovers():
    """`leftovers(session_id, within_s=10)`: what of a session is still alive after waiting up to `within_s`."""
    return remaining
