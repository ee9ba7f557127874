"""
Shared fixtures.
"""

import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """
    Run each test in its own temporary folder, so C{mktemp()} and relative
    paths never write into the checkout.
    """
    monkeypatch.chdir(tmp_path)
