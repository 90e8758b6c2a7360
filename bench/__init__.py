"""The benchmarks: each module a script (``python -m bench.NAME``); bench/report/ holds the
sections of docs/benchmarks.md that ``python -m bench.run_all`` writes."""

from pathlib import Path

# The repository: docs/ and weights/ are found from here, and child processes start here so
# that they import this checkout's bench/.
ROOT = Path(__file__).resolve().parents[1]
