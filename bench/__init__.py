"""``make bench``: throughput, storage and memory benchmarks for featdump (not pass/fail tests).

Run ``python -m bench`` (or ``make bench``); ``--quick`` is a short smoke run. Results are printed
and saved under ``bench/results/`` as JSON and a markdown table.
"""
