"""The test suite, a package: its helper modules (`tests.cli`, `tests.searches`, ...) import by that name.

pytest's default (prepend) import mode puts the first folder above this package, the repository root, on sys.path;
nothing under tests/ edits sys.path, and no test module (`test_*.py`) imports another: shared fixtures live in
`conftest.py`, shared plain helpers in the modules beside it.
"""
