"""flowhost benchmarks (``make bench`` / ``python -m bench``); never part of the test suite.

Every figure is reported next to a baseline measured in the same run; results go to
``bench/RESULTS.md``. See ``bench/README.md``.
"""
