-- 0001_core: tables, indexes, row-level security and settings of the df schema.
--
-- Runs as the df owner (the owner/worker role): every object created here is owned by it. The migration
-- runner creates schema df and df.schema_migrations before applying this file.
--
-- Row-level security is ENABLED on every table (the owner, i.e. the worker, bypasses it). Tables that
-- users never touch (settings, workers, schema_migrations) have RLS and no policy: nobody but the owner
-- sees a row.

-- The submitting identity. `current_user` as a regrole, quoted so that mixed-case names resolve.
-- (No SET clause, so that it inlines into policies and index conditions; every name is qualified.)
CREATE FUNCTION df._me() RETURNS regrole
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.quote_ident(current_user)::pg_catalog.regrole $$;

-- Settings: owner-only, never GUCs (any role can set a custom GUC).
CREATE TABLE df.settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL DEFAULT 'null',
    description text
);
ALTER TABLE df.settings ENABLE ROW LEVEL SECURITY;

INSERT INTO df.settings (key, value, description) VALUES
    ('http_enabled', 'false',
     'allow df.http / df.http_multipart graphs to be built and HTTP nodes to run'),
    ('allow_superuser_instances', 'false',
     'allow superusers to submit instances (pg_durable.enable_superuser_instances)'),
    ('loop_floor_seconds', '1',
     'minimum duration of one loop iteration'),
    ('loop_max_iterations', '100000',
     'maximum iterations of one loop'),
    ('list_instances_max_limit', '1000',
     'largest limit_count accepted by df.list_instances (pg_durable.list_instances_max_limit)'),
    ('new_transaction_conninfo', 'null',
     'libpq conninfo of the loopback role used by df.start(transaction_mode => ''new''), via dblink');

-- One row per started workflow.
CREATE TABLE df.instances (
    id              varchar(8) PRIMARY KEY CONSTRAINT instances_id_chk CHECK (id ~ '^[0-9a-f]{8}$'),
    label           text,
    root_node       varchar(8) NOT NULL,
    submitted_by    regrole NOT NULL DEFAULT df._me(),
    database        text,
    status          text NOT NULL DEFAULT 'pending'
        CONSTRAINT instances_status_chk
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    graph           text NOT NULL,              -- canonical graph JSON snapshot (docs/graph-format.md)
    graph_format    integer NOT NULL DEFAULT 1, -- version of that JSON format
    vars            jsonb NOT NULL DEFAULT '{}', -- the submitter's df.vars at df.start
    execution_count bigint NOT NULL DEFAULT 1,  -- current execution (root-loop generation), 1-based
    output          text,                       -- result / error text / 'cancelled: <reason>' when terminal
    checkpoint      jsonb,                      -- folded engine state (runtime)
    state_version   bigint NOT NULL DEFAULT 0,  -- bumped with every checkpoint (runtime)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    CONSTRAINT instances_id_submitter_key UNIQUE (id, submitted_by)
);
CREATE INDEX instances_status_created_idx ON df.instances (status, created_at DESC, id);
CREATE INDEX instances_created_idx ON df.instances (created_at DESC, id);
CREATE INDEX instances_label_created_idx ON df.instances (label, created_at DESC, id) WHERE label IS NOT NULL;
CREATE INDEX instances_pending_idx ON df.instances (created_at) WHERE status IN ('pending', 'running');

-- One row per graph node (reference §4.2).
CREATE TABLE df.nodes (
    instance_id    varchar(8) NOT NULL,
    id             varchar(8) NOT NULL CONSTRAINT nodes_id_chk CHECK (id ~ '^[0-9a-f]{8}$'),
    node_type      text NOT NULL CONSTRAINT nodes_node_type_chk CHECK (node_type IN (
        'SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
        'HTTP_MULTIPART', 'SIGNAL', 'CALL')),
    query          text,
    result_name    text CONSTRAINT nodes_result_name_chk CHECK (result_name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    left_node      varchar(8),
    right_node     varchar(8),
    status         text NOT NULL DEFAULT 'pending'
        CONSTRAINT nodes_status_chk CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    result         jsonb CONSTRAINT nodes_result_chk CHECK (result IS NULL OR status IN ('completed', 'failed')),
    error          text,
    submitted_by   regrole NOT NULL DEFAULT df._me(),
    database       text,
    status_details jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, id),
    CONSTRAINT nodes_instance_fk FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT nodes_left_fk FOREIGN KEY (instance_id, left_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT nodes_right_fk FOREIGN KEY (instance_id, right_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT nodes_structure_chk CHECK (CASE
        WHEN node_type IN ('SQL', 'BREAK', 'SLEEP', 'WAIT_SCHEDULE', 'SIGNAL', 'HTTP', 'HTTP_MULTIPART', 'CALL')
            THEN query IS NOT NULL AND left_node IS NULL AND right_node IS NULL
        WHEN node_type = 'THEN' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
        WHEN node_type = 'IF' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NOT NULL
        WHEN node_type = 'LOOP' THEN left_node IS NOT NULL AND right_node IS NULL
        WHEN node_type = 'JOIN' THEN left_node IS NOT NULL AND right_node IS NOT NULL
        WHEN node_type = 'RACE' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
    END)
);
ALTER TABLE df.instances ADD CONSTRAINT instances_root_fk FOREIGN KEY (id, root_node)
    REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED;

-- Per-role workflow variables (reference §1.3).
CREATE TABLE df.vars (
    name  text NOT NULL,
    value text,
    owner regrole NOT NULL DEFAULT df._me(),
    PRIMARY KEY (owner, name)
);

-- Inboxes: df.signal and df.cancel only insert here; the worker consumes.
CREATE TABLE df.signals (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  varchar(8) NOT NULL,
    signal_name  text NOT NULL,
    payload      jsonb NOT NULL,
    submitted_by regrole NOT NULL DEFAULT df._me(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT signals_instance_fk FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE
);
CREATE INDEX signals_instance_idx ON df.signals (instance_id, signal_name, id);

CREATE TABLE df.cancel_requests (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  varchar(8) NOT NULL,
    reason       text NOT NULL,
    submitted_by regrole NOT NULL DEFAULT df._me(),
    requested_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cancel_requests_instance_fk FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE
);
CREATE INDEX cancel_requests_instance_idx ON df.cancel_requests (instance_id);

-- Worker registry and heartbeat (written by workers, which run as the owner).
CREATE TABLE df.workers (
    id             uuid PRIMARY KEY,
    hostname       text,
    pid            integer,
    schema_version integer NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE df.workers ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.schema_migrations ENABLE ROW LEVEL SECURITY;

-- Row-level security: a role sees and writes only its own rows.
ALTER TABLE df.instances ENABLE ROW LEVEL SECURITY;
CREATE POLICY instances_own ON df.instances
    USING (submitted_by = df._me()) WITH CHECK (submitted_by = df._me());
ALTER TABLE df.nodes ENABLE ROW LEVEL SECURITY;
CREATE POLICY nodes_own ON df.nodes
    USING (submitted_by = df._me()) WITH CHECK (submitted_by = df._me());
ALTER TABLE df.vars ENABLE ROW LEVEL SECURITY;
CREATE POLICY vars_own ON df.vars
    USING (owner = df._me()) WITH CHECK (owner = df._me());
ALTER TABLE df.signals ENABLE ROW LEVEL SECURITY;
CREATE POLICY signals_own ON df.signals
    USING (submitted_by = df._me()) WITH CHECK (submitted_by = df._me());
ALTER TABLE df.cancel_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY cancel_requests_own ON df.cancel_requests
    USING (submitted_by = df._me()) WITH CHECK (submitted_by = df._me());

-- Setting accessors for functions that run as the caller. Each exposes one harmless value; the
-- loopback conninfo is read only inside SECURITY DEFINER code.
CREATE FUNCTION df._setting_bool(p_key text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT s.value = 'true'::jsonb FROM df.settings s WHERE s.key = p_key), false)
$$;
REVOKE ALL ON FUNCTION df._setting_bool(text) FROM PUBLIC;

CREATE FUNCTION df._http_enabled() RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT df._setting_bool('http_enabled') $$;

CREATE FUNCTION df._superuser_instances_allowed() RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT df._setting_bool('allow_superuser_instances') $$;

CREATE FUNCTION df._list_instances_max_limit() RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT (s.value #>> '{}')::integer FROM df.settings s
                     WHERE s.key = 'list_instances_max_limit'), 1000)
$$;
