"""Loaded by every Python process started with this folder on ``PYTHONPATH`` (``erasure_pipeline_tests/crash.py``
puts it there for a crash test's run): the forkserver of Dagster's multiprocess executor, whose step processes
then count their ledger writes with the run's, and die with it at the planned one."""

import os

if os.environ.get("ERASURE_PIPELINE_TEST_CRASH"):
    from erasure_pipeline_tests.crash import install

    install()
