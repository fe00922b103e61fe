"""The benchmarks' own tests share the suite's fixtures (``tests/conftest.py``)."""

from tests.conftest import mnist_dir  # noqa: F401 - a fixture
