"""Benchmarks: one command each (``python -m benchmarks.<name>``), printing Markdown tables of
figures measured in one run. Latest results: benchmarks/RESULTS.md."""
