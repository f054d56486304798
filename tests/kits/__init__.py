"""Helpers shared by the tests: import them as `tests.kits.<name>`."""
