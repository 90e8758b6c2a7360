"""The sections of the benchmark report docs/benchmarks.md, one module each, with the plan of
what a run measures (plan.py) and what the sections share (common.py); ``bench.run_all``
runs them and writes the report."""
