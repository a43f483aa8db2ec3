"""Embedding pipeline: chunk documents in SQL, embed the chunks in Python, upsert them into pgvector, answer a
similarity query, and survive a worker crash in the middle without embedding anything twice.

    python examples/embedding_pipeline.py

The workflow, in order:

1. a SQL step splits each document into chunks of twelve words;
2. a loop takes the next batch of chunks without an embedding, calls the Python function `embed_chunks` on it
   (a `Call` node: only workers that registered the function run it) and upserts the vectors with a SQL step,
   until no chunk is left;
3. `embed_query` embeds a question, and a SQL step returns the three nearest chunks (cosine distance).

The embedder is small, local and deterministic (words and their trigrams hashed into 128 dimensions), so the
example runs offline; put a real model where `embed_texts` is. An OpenAI-compatible endpoint can take the
place of the call as an HTTP step, `http(url, body=..., headers={"Authorization": "Bearer
{secret:EMBEDDINGS_KEY}"})`, whose key the application role stores with `SELECT df.set_secret('EMBEDDINGS_KEY',
'...')`: the worker resolves it just before the request and never writes it to history (HTTP steps must be
enabled in df.settings).

The crash: a first worker runs in a child process and is killed (SIGKILL) as it starts the third batch, after
two batches were embedded and committed. A second worker, in this process, resumes the same instance once the
dead worker's lease runs out. `embed_chunks` logs every chunk it embeds through its own connection, outside
the workflow's transactions, so the log records real work: at the end every chunk was embedded once, by one
of the two workers, and upserted once. (A plain call is at-least-once: a crash inside a call would run that
one batch again, and the upsert would still keep one row per chunk.)

With no configuration it uses the embedded PostgreSQL (which ships pgvector), as `postgres` to create the
extension and the example's schema. Otherwise set PGDURABLE_DSN (application role), PGDURABLE_WORKER_DSN (the
df owner) and PGDURABLE_ADMIN_DSN (a role that may create the extension, if it is missing, and the schema;
default: the owner).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql

import pgdurable
from pgdurable import Client, Step, Worker, WorkerConfig, break_, call, if_rows, loop, seq

SCHEMA = "embedding_example"
DIMENSIONS = 128
BATCH = 8
CRASH_ENV = "EMBEDDING_EXAMPLE_CRASH_AT_BATCH"
CRASH_AT = 3
QUESTION = "How long should bread dough rise before baking?"
EXPECTED_TOP = "Baking bread"
LABEL = "embedding pipeline"

DOCUMENTS = {
    "Baking bread": (
        "Mix flour, water, salt and yeast into a dough and knead it until it is smooth. Let the dough rise "
        "for about two hours, until it has doubled. Shape the loaf, let it rise again for an hour, then bake "
        "the bread in a hot oven until the crust is brown and the loaf sounds hollow."
    ),
    "Durable workflows": (
        "A durable workflow checkpoints every step in the database, so that a crash, a restart or a failover "
        "resumes it at its last checkpoint. Steps that commit with their checkpoint run exactly once, and the "
        "workers that run them can come and go."
    ),
    "Vector search": (
        "An embedding maps a text to a vector of numbers so that similar texts get nearby vectors. pgvector "
        "stores the vectors in PostgreSQL and finds the nearest ones to a query vector by cosine distance, "
        "with an index or an exact scan."
    ),
    "Tending tomatoes": (
        "Tomatoes want sun, warmth and deep watering twice a week. Tie the stems to stakes as they grow, pinch "
        "out the side shoots, and pick the fruit when it is red and gives a little under your thumb."
    ),
    "Observing Jupiter": (
        "Jupiter is the brightest planet after Venus. A small telescope shows its cloud belts and the four "
        "moons that Galileo found, which change places from night to night as they orbit the giant planet."
    ),
    "Brewing coffee": (
        "Grind the beans just before brewing, a little coarser than sand. Pour water just off the boil over "
        "the grounds, let them bloom for thirty seconds, then pour the rest slowly; the whole brew should "
        "take about three minutes."
    ),
}

# -- the Python steps ---------------------------------------------------------------------------------------

_log_dsn: str | None = None  # where embed_chunks logs what it embeds (outside the workflow's transactions)
_calls = 0


def embed_texts(texts: list[str]) -> list[list[float]]:
    """The local embedder: each word, and each character trigram of it at half the weight, hashed (BLAKE2, so
    that every process agrees) into a signed bucket, then scaled to unit length. Deterministic, offline."""
    vectors = []
    for text in texts:
        vector = [0.0] * DIMENSIONS
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            features = [(f"w:{word}", 1.0)] + [(f"t:{f' {word} '[i : i + 3]}", 0.5) for i in range(len(word))]
            for feature, weight in features:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % DIMENSIONS
                vector[bucket] += weight if digest[4] & 1 else -weight
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vectors.append([round(x / norm, 6) for x in vector])
    return vectors


def embed_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Embed one batch of chunks ({id, content}); returns [{id, embedding}] for the upsert step."""
    global _calls
    _calls += 1
    if _calls == int(os.environ.get(CRASH_ENV, "0")):
        print(f"  [worker {os.getpid()}] crashing as it starts batch {_calls} (SIGKILL)", flush=True)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    vectors = embed_texts([chunk["content"] for chunk in chunks])
    if _log_dsn is not None:
        with psycopg.connect(_log_dsn, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("INSERT INTO {}.embed_log (chunk_id, pid) SELECT unnest(%s::bigint[]), %s").format(
                    pgsql.Identifier(SCHEMA)
                ),
                ([chunk["id"] for chunk in chunks], os.getpid()),
            )
    print(f"  [worker {os.getpid()}] embedded {len(chunks)} chunks", flush=True)
    return [{"id": chunk["id"], "embedding": vector} for chunk, vector in zip(chunks, vectors, strict=True)]


def embed_query(text: str) -> list[float]:
    """Embed the question of the similarity search."""
    return embed_texts([text])[0]


def register(app_role: str) -> None:
    """Register the functions; the application role that starts the workflow may call them (by default only
    the worker's own role may)."""
    pgdurable.function(name="embed_chunks", roles=[app_role])(embed_chunks)
    pgdurable.function(name="embed_query", roles=[app_role])(embed_query)


# -- the workflow -------------------------------------------------------------------------------------------

CHUNK = f"""INSERT INTO {SCHEMA}.chunks (doc_id, seq, content)
SELECT d.id, (w.n - 1) / 12, string_agg(w.word, ' ' ORDER BY w.n)
  FROM {SCHEMA}.documents d, regexp_split_to_table(d.body, '\\s+') WITH ORDINALITY AS w(word, n)
 GROUP BY d.id, (w.n - 1) / 12
    ON CONFLICT (doc_id, seq) DO NOTHING
RETURNING id"""
NEXT_BATCH = f"""SELECT c.id, c.content FROM {SCHEMA}.chunks c
 WHERE NOT EXISTS (SELECT FROM {SCHEMA}.chunk_embeddings e WHERE e.chunk_id = c.id)
 ORDER BY c.id LIMIT {BATCH}"""
UPSERT = f"""INSERT INTO {SCHEMA}.chunk_embeddings (chunk_id, embedding)
SELECT (v ->> 'id')::bigint, (v ->> 'embedding')::vector FROM jsonb_array_elements($vectors::jsonb) AS v
    ON CONFLICT (chunk_id) DO UPDATE SET embedding = excluded.embedding,
                                         upserts = {SCHEMA}.chunk_embeddings.upserts + 1"""
SEARCH = f"""SELECT d.title, c.content, round((e.embedding <=> $question::vector)::numeric, 4) AS distance
  FROM {SCHEMA}.chunk_embeddings e JOIN {SCHEMA}.chunks c ON c.id = e.chunk_id
  JOIN {SCHEMA}.documents d ON d.id = c.doc_id
 ORDER BY e.embedding <=> $question::vector LIMIT 3"""

pipeline = seq(
    Step(CHUNK) | "chunked",
    loop(
        (Step(NEXT_BATCH) | "batch")
        >> if_rows("batch", (call("embed_chunks", {"chunks": "$batch.*"}) | "vectors") >> Step(UPSERT), break_())
    ),
    call("embed_query", {"text": QUESTION}) | "question",
    Step(SEARCH),
)


# -- setting up ---------------------------------------------------------------------------------------------


def dsns() -> tuple[str, str, str]:
    """The application, owner and admin DSNs: from the environment, else the embedded default."""
    app_dsn, owner_dsn = os.environ.get("PGDURABLE_DSN"), os.environ.get("PGDURABLE_WORKER_DSN")
    if app_dsn is None or owner_dsn is None:
        from pgdurable import embedded

        return embedded.app_dsn(), embedded.owner_dsn(), embedded.default_dsn("postgres")
    return app_dsn, owner_dsn, os.environ.get("PGDURABLE_ADMIN_DSN", owner_dsn)


def role_of(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def set_up(admin_dsn: str, app_role: str, owner_role: str) -> None:
    """pgvector, and the example's schema afresh: documents, chunks, embeddings and the embedder's log."""
    schema, app, owner = pgsql.Identifier(SCHEMA), pgsql.Identifier(app_role), pgsql.Identifier(owner_role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
            conn.execute("CREATE EXTENSION vector")
        statements = [
            "DROP SCHEMA IF EXISTS {schema} CASCADE",
            "CREATE SCHEMA {schema}",
            "CREATE TABLE {schema}.documents (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)",
            "CREATE TABLE {schema}.chunks (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " doc_id int NOT NULL REFERENCES {schema}.documents, seq int NOT NULL, content text NOT NULL,"
            " UNIQUE (doc_id, seq))",
            f"CREATE TABLE {{schema}}.chunk_embeddings (chunk_id bigint PRIMARY KEY REFERENCES {{schema}}.chunks,"
            f" embedding vector({DIMENSIONS}) NOT NULL, upserts int NOT NULL DEFAULT 1)",
            "CREATE TABLE {schema}.embed_log (chunk_id bigint NOT NULL, pid int NOT NULL,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())",
            "GRANT USAGE ON SCHEMA {schema} TO {app}, {owner}",
            "GRANT SELECT ON {schema}.documents, {schema}.embed_log TO {app}",
            "GRANT SELECT, INSERT ON {schema}.chunks TO {app}",
            "GRANT SELECT, INSERT, UPDATE ON {schema}.chunk_embeddings TO {app}",
            "GRANT INSERT ON {schema}.embed_log TO {owner}",
        ]
        for statement in statements:
            conn.execute(pgsql.SQL(statement).format(schema=schema, app=app, owner=owner))
        with conn.cursor() as cursor:
            cursor.executemany(
                pgsql.SQL("INSERT INTO {}.documents VALUES (%s, %s, %s)").format(schema),
                [(i, title, body) for i, (title, body) in enumerate(DOCUMENTS.items(), start=1)],
            )


def scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query.replace("{schema}", SCHEMA)).fetchone()
    assert row is not None
    return row[0]


# -- the worker that crashes, in a child process ------------------------------------------------------------


def crashing_worker() -> None:
    """`--worker`: register the functions and run a worker until killed (the parent arms the crash)."""
    global _log_dsn
    app_dsn, owner_dsn, _ = dsns()
    register(role_of(app_dsn))
    _log_dsn = owner_dsn
    parent = os.getppid()
    # A short lease, so that the next worker may take over 2 s after this one dies.
    with Worker(owner_dsn, functions=[embed_chunks, embed_query], config=WorkerConfig(lease_seconds=2.0)):
        while os.getppid() == parent:  # until the crash; or, should the parent be gone, stop
            time.sleep(0.2)


def main() -> None:
    global _log_dsn
    app_dsn, owner_dsn, admin_dsn = dsns()
    app_role = role_of(app_dsn)
    set_up(admin_dsn, app_role, role_of(owner_dsn))
    register(app_role)
    _log_dsn = owner_dsn
    client = Client(app_dsn)

    print("The pipeline, as df.explain draws it:\n")
    print(pipeline.explain())
    client.cancel_all(label=LABEL, reason="a new run of the example started")  # an interrupted earlier run
    instance = client.start(pipeline, label=LABEL)
    print(f"\nstarted instance {instance.id}; a first worker runs it in a child process")

    env = {**os.environ, "PGDURABLE_DSN": app_dsn, "PGDURABLE_WORKER_DSN": owner_dsn, CRASH_ENV: str(CRASH_AT)}
    child = subprocess.Popen([sys.executable, __file__, "--worker"], env=env)
    try:
        code = child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise SystemExit("the first worker did not reach its crash point within 60 s") from None
    finally:
        if child.poll() is None:
            child.kill()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        chunks = scalar(conn, "SELECT count(*) FROM {schema}.chunks")
        done = scalar(conn, "SELECT count(*) FROM {schema}.chunk_embeddings")
    print(f"the first worker died (exit code {code}) with {done} of {chunks} chunks embedded;")
    print(f"instance {instance.id} is {instance.status()}\n")
    if code == 0 or not 0 < done < chunks or instance.status() != "running":
        raise SystemExit("the crash did not happen mid-pipeline")

    print("a second worker resumes it (once the dead worker's 2 s lease has run out):")
    started = time.monotonic()
    with Worker(owner_dsn, functions=[embed_chunks, embed_query]):
        status = instance.wait(timeout=60, progress=True)
    print(f"instance {instance.id}: {status} ({time.monotonic() - started:.1f} s after the resume began)\n")

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        checks = {
            "chunks": chunks,
            "chunks with an embedding": scalar(conn, "SELECT count(*) FROM {schema}.chunk_embeddings"),
            "most upserts of one chunk": scalar(conn, "SELECT max(upserts) FROM {schema}.chunk_embeddings"),
            "embeddings computed": scalar(conn, "SELECT count(*) FROM {schema}.embed_log"),
            "chunks embedded twice": scalar(
                conn, "SELECT count(*) FROM (SELECT FROM {schema}.embed_log GROUP BY chunk_id HAVING count(*) > 1) x"
            ),
            "workers that embedded": scalar(conn, "SELECT count(DISTINCT pid) FROM {schema}.embed_log"),
        }
    for name, value in checks.items():
        print(f"  {name:<28} {value}")
    result = instance.result()
    print(f"\nnearest chunks to {QUESTION!r}:")
    for row in result["rows"] if status == "completed" else []:
        print(f"  {row['distance']:<8} {row['title']:<18} {row['content']}")
    expected = {
        "chunks with an embedding": chunks,
        "most upserts of one chunk": 1,
        "embeddings computed": chunks,
        "chunks embedded twice": 0,
        "workers that embedded": 2,
    }
    wrong = {name: checks[name] for name, value in expected.items() if checks[name] != value}
    if status != "completed" or wrong or result["rows"][0]["title"] != EXPECTED_TOP:
        raise SystemExit(f"wrong result: status {status}, checks {wrong or 'ok'}, result {result}")
    print("\nevery chunk was embedded once and upserted once, across a crash: OK")


if __name__ == "__main__":
    crashing_worker() if sys.argv[1:] == ["--worker"] else main()
