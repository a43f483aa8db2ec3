"""The pgdurable benchmark harness: the floor, pgdurable (SQL and Python front ends) and DBOS side by side.

Run it from the repository root::

    python -m benchmarks.run [--quick] [--out report.json]

It starts one embedded PostgreSQL in a temporary data directory, runs every workload on it, prints a table
with ratios against the floor and against DBOS, writes a JSON report, and stops the server. See
docs/performance.md for what each workload measures.
"""
