"""Executors: how one step touches the outside world (a SQL statement now; HTTP and Python calls later)."""
