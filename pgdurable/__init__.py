"""pgdurable: durable workflows inside any PostgreSQL.

Write a workflow in Python (`Step("SELECT ...") >> Step("...")`) or in pg_durable's SQL language
(`'SELECT ...' ~> '...'`); both build the same graph JSON.
"""

from pgdurable.client import Client, Instance, InstanceNotFound, WaitTimeout
from pgdurable.dsl import (
    Bind,
    Break,
    Http,
    HttpMultipart,
    If,
    Loop,
    Node,
    Parallel,
    Race,
    Sleep,
    Step,
    Then,
    WaitForSchedule,
    WaitForSignal,
    break_,
    from_json,
    http,
    http_multipart,
    if_,
    if_rows,
    join,
    join3,
    loop,
    race,
    seq,
    sleep,
    sql,
    to_json,
    wait_for_schedule,
    wait_for_signal,
)
from pgdurable.errors import GraphError, PgdurableError
from pgdurable.migrate import MigrationError, install, uninstall
from pgdurable.runtime.worker import Worker, WorkerConfig

__version__ = "0.1.0"

__all__ = [
    "Bind",
    "Break",
    "Client",
    "GraphError",
    "Http",
    "HttpMultipart",
    "If",
    "Instance",
    "InstanceNotFound",
    "Loop",
    "MigrationError",
    "Node",
    "Parallel",
    "PgdurableError",
    "Race",
    "Sleep",
    "Step",
    "Then",
    "WaitForSchedule",
    "WaitForSignal",
    "WaitTimeout",
    "Worker",
    "WorkerConfig",
    "__version__",
    "break_",
    "from_json",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "install",
    "join",
    "join3",
    "loop",
    "race",
    "seq",
    "sleep",
    "sql",
    "to_json",
    "uninstall",
    "wait_for_schedule",
    "wait_for_signal",
]
