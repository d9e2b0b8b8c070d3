"""Loaded by every Python process started with this folder on ``PYTHONPATH``: the forkserver of Dagster's
multiprocess executor, whose step processes inherit what it installs. ``erasure_pipeline_tests/crash.py`` puts it
there for a crash test's run (the step processes count their ledger writes with the run's and die with it at the
planned one); ``erasure_pipeline_tests/injected.py`` for a fault a test injects into every process of a run."""

import os

if os.environ.get("ERASURE_PIPELINE_TEST_CRASH"):
    from erasure_pipeline_tests.crash import install

    install()
if os.environ.get("ERASURE_PIPELINE_TEST_INJECT"):
    from erasure_pipeline_tests.injected import install as inject

    inject(os.environ["ERASURE_PIPELINE_TEST_INJECT"])
