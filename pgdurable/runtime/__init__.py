"""How a workflow runs: the pure engine (apply/decide), the store (every runtime SQL statement) and the
worker that moves data between them. Internal; the public names are re-exported from `pgdurable`.
"""
