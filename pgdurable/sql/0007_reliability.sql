-- 0007_reliability: idempotent starts, structured error records, deleting instances, bulk cancel, retention and
-- the result size limit (issue 5, the SQL side).
--
-- Extension policy (design §1): df.start and df.start_with keep their signatures; what is new is new functions
-- (df.error, df.delete_instance, df.cancel_all, df._prune), a new df.start_with option (idempotency_key) and
-- new df.settings keys. df._start and df._insert_instance keep their signatures and delegate to the keyed
-- functions below, so there is one implementation of each path.

------------------------------------------------------------------------------------------------------------
-- Settings (read by the worker, which runs as the owner)
------------------------------------------------------------------------------------------------------------

INSERT INTO df.settings (key, value, description) VALUES
    ('retention_days', '30',
     'terminal instances (completed, failed, cancelled) older than this many days, counted from completed_at, '
     'else updated_at, are deleted by the workers with their nodes and history (null: keep them forever)'),
    ('retention_batch', '1000',
     'the most instances one retention pass (df._prune) deletes'),
    ('max_result_bytes', '16777216',
     'the largest result a step may return, in bytes of its JSON rows; a larger one fails the step and '
     'nothing of it is stored')
ON CONFLICT (key) DO NOTHING;

------------------------------------------------------------------------------------------------------------
-- Idempotent start
------------------------------------------------------------------------------------------------------------

-- Unique per (submitting role, key). The key goes with its row, so deleting or pruning the instance releases
-- it. (No worker UPDATE touches these columns: checkpoint writes stay HOT.)
ALTER TABLE df.instances ADD COLUMN idempotency_key text
    CONSTRAINT instances_idempotency_key_chk
    CHECK (idempotency_key <> '' AND pg_catalog.length(idempotency_key) <= 255);
CREATE UNIQUE INDEX instances_idempotency_key_idx ON df.instances (submitted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Insert one instance and its nodes; returns the instance id. With p_idempotency_key, a start whose key the
-- role already used returns that instance instead (and inserts nothing), or fails if its graph differs.
--
-- Racing starts: INSERT ... ON CONFLICT DO NOTHING waits on the unique index for the transaction that holds
-- the key; if that one commits, this insert does nothing and the next statement (a new snapshot: READ
-- COMMITTED) reads the winner's row; if it rolls back, this insert goes ahead. Under REPEATABLE READ or
-- SERIALIZABLE a winner committed after this transaction's snapshot is a serialization failure (retry).
CREATE FUNCTION df._insert_instance_keyed(p_role regrole, p_graph df._graph, p_label text, p_database text,
                                          p_vars jsonb, p_idempotency_key text)
    RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_id text;
    v_root text;
    v_canonical constant text := df._render(p_graph);
    v_vars jsonb;
    v_rows df._flat_node[];
    v_existing_id text;
    v_existing_graph text;
BEGIN
    SELECT array_agg(f ORDER BY f.ord) INTO v_rows FROM df._flatten(p_graph) AS f;
    v_root := v_rows[1].id;
    SELECT coalesce(jsonb_object_agg(v.name, v.value) FILTER (WHERE v.value IS NOT NULL), '{}')
           || coalesce(p_vars, '{}')
      INTO v_vars FROM df.vars v WHERE v.owner = p_role;
    FOR attempt IN 1..10 LOOP
        -- no conflict target: the arbiters are the instance id (a random collision: try another id) and the
        -- idempotency key
        INSERT INTO df.instances AS i (id, label, root_node, submitted_by, database, graph, graph_format, vars,
                                       idempotency_key)
        VALUES (right(gen_random_uuid()::text, 8), p_label, v_root, p_role, p_database, v_canonical, 1, v_vars,
                p_idempotency_key)
        ON CONFLICT DO NOTHING
        RETURNING i.id INTO v_id;
        EXIT WHEN v_id IS NOT NULL;
        IF p_idempotency_key IS NOT NULL THEN
            SELECT i.id, i.graph INTO v_existing_id, v_existing_graph
              FROM df.instances i
             WHERE i.submitted_by = p_role AND i.idempotency_key = p_idempotency_key;
            IF v_existing_id IS NOT NULL THEN
                IF v_existing_graph IS DISTINCT FROM v_canonical THEN
                    RAISE EXCEPTION 'df.start_with: idempotency key % already started instance % with a different graph',
                        quote_literal(p_idempotency_key), v_existing_id
                        USING ERRCODE = '23505',
                              DETAIL = format(E'instance %s: %s\nthis start: %s', v_existing_id,
                                              df._truncate_bytes(v_existing_graph, 500, 497),
                                              df._truncate_bytes(v_canonical, 500, 497)),
                              HINT = format('Start a different workflow with a different idempotency key, or delete '
                                            'instance %s (df.delete_instance) to release the key.', v_existing_id);
                END IF;
                RETURN v_existing_id;
            END IF;
            -- the conflict was the random id, or the key's holder was deleted meanwhile: try again
        END IF;
    END LOOP;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'df.start: could not allocate an instance id' USING ERRCODE = '23505';
    END IF;
    INSERT INTO df.nodes (instance_id, id, node_type, query, result_name, left_node, right_node, submitted_by,
                          database)
    SELECT v_id, f.id, f.node_type, f.query, f.result_name, f.left_node, f.right_node, p_role, p_database
      FROM unnest(v_rows) AS f ORDER BY f.ord;
    PERFORM pg_notify('df_work', 'start ' || v_id);
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION df._insert_instance(p_role regrole, p_graph df._graph, p_label text, p_database text,
                                               p_vars jsonb DEFAULT '{}')
    RETURNS text
    LANGUAGE sql VOLATILE
AS $$ SELECT df._insert_instance_keyed(p_role, p_graph, p_label, p_database, p_vars, NULL) $$;

-- The body of df.start and df.start_with.
CREATE FUNCTION df._start_keyed(p_fut text, p_label text, p_database text, p_mode text, p_vars jsonb,
                                p_idempotency_key text)
    RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_mode constant text := lower(p_mode);
    v_root jsonb;
    v_graph df._graph;
BEGIN
    IF v_mode IS NULL OR v_mode NOT IN ('caller', 'new') THEN
        RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''',
            p_mode USING ERRCODE = '22023';
    END IF;
    IF p_fut IS NULL THEN
        RAISE EXCEPTION 'df.start: the graph must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF p_idempotency_key IS NOT NULL AND (p_idempotency_key = '' OR length(p_idempotency_key) > 255) THEN
        RAISE EXCEPTION 'df.start_with: option ''idempotency_key'' must be 1 to 255 characters, got %',
            length(p_idempotency_key) USING ERRCODE = '22023';
    END IF;
    v_root := df._root_graph(p_fut);
    IF p_database IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = p_database) THEN
        RAISE EXCEPTION 'database "%" does not exist', p_database USING ERRCODE = '3D000';
    END IF;
    PERFORM df._check_submitter(df._me());
    v_graph := df._validated(v_root);
    IF v_mode = 'new' THEN
        PERFORM df._refuse_in_workflow('df.start(transaction_mode => ''new'')');
        IF p_vars <> '{}' THEN
            RAISE EXCEPTION 'df.start_with: the vars option cannot be combined with transaction_mode ''new'''
                USING ERRCODE = '0A000';
        END IF;
        IF p_idempotency_key IS NOT NULL THEN
            RAISE EXCEPTION 'df.start_with: the idempotency_key option cannot be combined with transaction_mode ''new'''
                USING ERRCODE = '0A000',
                      HINT = 'Start from a separate connection (Client.start does) with the key instead.';
        END IF;
        RETURN df._start_new(df._me(), df._render(v_graph), p_label, p_database);
    END IF;
    RETURN df._insert_instance_keyed(df._me(), v_graph, p_label, p_database, p_vars, p_idempotency_key);
END
$$;

CREATE OR REPLACE FUNCTION df._start(p_fut text, p_label text, p_database text, p_mode text, p_vars jsonb)
    RETURNS text
    LANGUAGE sql VOLATILE
AS $$ SELECT df._start_keyed(p_fut, p_label, p_database, p_mode, p_vars, NULL) $$;

-- pgdurable extension: df.start with options pg_durable lacks, as one jsonb: label, database,
-- transaction_mode, vars (an object of strings that override the caller's df.vars in the snapshot) and
-- idempotency_key (1 to 255 characters; the same key of the same role returns the same instance).
CREATE OR REPLACE FUNCTION df.start_with(graph text, options jsonb DEFAULT '{}') RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    c_known constant text[] := ARRAY['label', 'database', 'transaction_mode', 'vars', 'idempotency_key'];
    v_options constant jsonb := coalesce(options, '{}');
    v_vars jsonb;
    v_key text;
BEGIN
    IF jsonb_typeof(v_options) <> 'object' THEN
        RAISE EXCEPTION 'df.start_with: options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(v_options) AS k WHERE k <> ALL (c_known) ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION 'df.start_with: unknown option ''%'' (expected %)', v_key, array_to_string(c_known, ', ')
            USING ERRCODE = '22023';
    END IF;
    SELECT k INTO v_key FROM jsonb_each(v_options) AS e(k, v)
     WHERE k <> 'vars' AND jsonb_typeof(v) NOT IN ('string', 'null') ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION 'df.start_with: option ''%'' must be a string or null', v_key USING ERRCODE = '22023';
    END IF;
    v_vars := coalesce(nullif(v_options -> 'vars', 'null'), '{}');
    IF jsonb_typeof(v_vars) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(v_vars) AS e(k, v) WHERE jsonb_typeof(v) <> 'string') THEN
        RAISE EXCEPTION 'df.start_with: option ''vars'' must be an object of strings' USING ERRCODE = '22023';
    END IF;
    RETURN df._start_keyed(graph, v_options ->> 'label', v_options ->> 'database',
                           coalesce(v_options ->> 'transaction_mode', 'caller'), v_vars,
                           v_options ->> 'idempotency_key');
END
$$;

------------------------------------------------------------------------------------------------------------
-- Error records
------------------------------------------------------------------------------------------------------------

-- The structured failure of an instance: df.nodes.error of its failing node, as the worker records it
-- ({"sqlstate", "message", "detail", "hint", "node": "<graph path>", "attempt": n}), or NULL when no failed node
-- has one. When several do, the most recently updated wins, then the deepest (a failure recorded on a step and
-- its ancestors in one transaction shares one updated_at). Text that is not a JSON object is returned as
-- {"message": <text>}. Reads under row-level security, like df.status.
CREATE FUNCTION df.error(instance_id text) RETURNS jsonb
    LANGUAGE sql STABLE STRICT
AS $$
    WITH RECURSIVE tree (id, depth) AS (
        SELECT i.root_node::text, 0 FROM df.instances i WHERE i.id = error.instance_id
        UNION ALL
        SELECT c.child, t.depth + 1
          FROM tree t
          JOIN df.nodes p ON p.instance_id = error.instance_id AND p.id = t.id
          CROSS JOIN LATERAL (
              SELECT x.child
                FROM unnest(ARRAY[p.left_node::text, p.right_node::text,
                                  CASE WHEN p.node_type IN ('IF', 'LOOP')
                                       THEN df._try_jsonb(p.query) ->> 'condition_node' END]) AS x(child)
               WHERE x.child IS NOT NULL
              UNION ALL
              SELECT e.child
                FROM jsonb_array_elements_text(
                         CASE WHEN p.node_type = 'JOIN'
                                   AND jsonb_typeof(df._try_jsonb(p.query) -> 'extra_nodes') = 'array'
                              THEN df._try_jsonb(p.query) -> 'extra_nodes' ELSE '[]' END) AS e(child)
          ) c
    )
    SELECT CASE WHEN jsonb_typeof(df._try_jsonb(n.error)) = 'object' THEN df._try_jsonb(n.error)
                ELSE jsonb_build_object('message', n.error) END
      FROM df.nodes n
      LEFT JOIN tree t ON t.id = n.id
     WHERE n.instance_id = error.instance_id AND n.status = 'failed' AND n.error IS NOT NULL
     ORDER BY n.updated_at DESC, coalesce(t.depth, -1) DESC, n.id
     LIMIT 1
$$;

------------------------------------------------------------------------------------------------------------
-- Deleting an instance
------------------------------------------------------------------------------------------------------------

-- Who is asking? Users hold no DELETE on df tables, so the deletion runs as the owner, in SECURITY DEFINER
-- code, where current_user is the owner. The caller's identity must reach it unforgeably:
-- - session_user is not the caller. Steps run on the worker's connection inside a runner owned by the
--   submitter (design §2), so there session_user is the worker, and pg_has_role(session_user, <role>, 'MEMBER')
--   holds for every role when the worker is a superuser, or (PostgreSQL 16+) a CREATEROLE role with ADMIN on
--   the application roles, as df.grant_usage requires: a step of role A could delete role B's instances.
-- - A role passed in by a SECURITY INVOKER wrapper is forgeable: the definer it calls is callable directly,
--   with any role.
-- - What cannot be forged is a row the caller inserted under row-level security: the policy's WITH CHECK
--   (submitted_by = df._me(), i.e. current_user at the INSERT) and the foreign key on (instance_id,
--   submitted_by) prove that the inserting role submitted that instance (roles that bypass RLS could already
--   write any df row). So df.delete_instance (SECURITY INVOKER) inserts a delete request, and a SECURITY
--   DEFINER trigger checks that instance's submitted_by against the request's, and deletes the instance. The
--   request goes with it (ON DELETE CASCADE), so the table stays empty.
CREATE TABLE df.delete_requests (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  varchar(8) NOT NULL,
    submitted_by regrole NOT NULL DEFAULT df._me(),
    requested_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delete_requests_instance_fk FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE
);
ALTER TABLE df.delete_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY delete_requests_own ON df.delete_requests
    USING (submitted_by = df._me()) WITH CHECK (submitted_by = df._me());

CREATE FUNCTION df._apply_delete_request() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text;
BEGIN
    -- the ownership check: the instance's submitter is the role that inserted the request (see above)
    SELECT i.status INTO v_status FROM df.instances i
     WHERE i.id = NEW.instance_id AND i.submitted_by = NEW.submitted_by
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', NEW.instance_id USING ERRCODE = '42501';
    END IF;
    IF v_status NOT IN ('completed', 'failed', 'cancelled') THEN
        IF df._effective_status(NEW.instance_id, v_status) = 'cancelled' THEN
            RAISE EXCEPTION 'df.delete_instance: instance % is being cancelled and cannot be deleted yet',
                NEW.instance_id
                USING ERRCODE = '55000',
                      HINT = 'Delete it once the worker has stopped it (df.await_instance returns).';
        END IF;
        RAISE EXCEPTION 'df.delete_instance: instance % is % and cannot be deleted', NEW.instance_id, v_status
            USING ERRCODE = '55000',
                  HINT = 'Only completed, failed or cancelled instances can be deleted: cancel it (df.cancel), '
                         'wait until it is cancelled, then delete it.';
    END IF;
    -- nodes, history, work items, signals, cancel and delete requests go with it (ON DELETE CASCADE)
    DELETE FROM df.instances i WHERE i.id = NEW.instance_id;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION df._apply_delete_request() FROM PUBLIC;
CREATE TRIGGER delete_requests_apply AFTER INSERT ON df.delete_requests
    FOR EACH ROW EXECUTE FUNCTION df._apply_delete_request();

-- Delete a terminal instance with its nodes, history and inboxes: true if deleted, false if no instance with
-- this id is visible to the caller (none, already deleted, or another role's). A pending or running one is
-- refused. Its idempotency key, if any, is released.
CREATE FUNCTION df.delete_instance(instance_id text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
DECLARE
    v_id text;
    v_submitted_by regrole;
BEGIN
    SELECT i.id, i.submitted_by INTO v_id, v_submitted_by FROM df.instances i
     WHERE i.id = delete_instance.instance_id;
    IF v_id IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO df.delete_requests (instance_id, submitted_by) VALUES (v_id, v_submitted_by);
    RETURN true;
END
$$;

------------------------------------------------------------------------------------------------------------
-- Bulk cancel
------------------------------------------------------------------------------------------------------------

-- Cancel the caller's own pending or running instances that match every filter given (label: exact; status:
-- 'pending' or 'running'), as df.cancel does one by one: a cancel request per instance, which the worker
-- carries out. Instances already being cancelled are not counted again. Returns how many were cancelled.
CREATE FUNCTION df.cancel_all(label_filter text DEFAULT NULL, status_filter text DEFAULT NULL,
                              reason text DEFAULT 'Cancelled by user')
    RETURNS integer
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_ids text[];
BEGIN
    IF label_filter IS NULL AND status_filter IS NULL THEN
        RAISE EXCEPTION 'df.cancel_all: give label_filter, status_filter or both'
            USING ERRCODE = '22023',
                  HINT = 'To cancel every pending instance, pass status_filter => ''pending'' (and again with '
                         '''running'').';
    END IF;
    IF status_filter IS NOT NULL AND status_filter NOT IN ('pending', 'running') THEN
        RAISE EXCEPTION 'df.cancel_all: status_filter must be ''pending'' or ''running'', got %',
            quote_literal(status_filter)
            USING ERRCODE = '22023', HINT = 'Completed, failed and cancelled instances cannot be cancelled.';
    END IF;
    IF cancel_all.reason IS NULL THEN
        RAISE EXCEPTION 'df.cancel_all: reason must not be NULL' USING ERRCODE = '22004';
    END IF;
    WITH doomed AS (
        SELECT i.id, i.submitted_by FROM df.instances i
         WHERE i.submitted_by = df._me()
           AND i.status IN ('pending', 'running')
           AND (status_filter IS NULL OR i.status = status_filter)
           AND (label_filter IS NULL OR i.label = label_filter)
           AND NOT EXISTS (SELECT 1 FROM df.cancel_requests c WHERE c.instance_id = i.id)
    ), requested AS (
        INSERT INTO df.cancel_requests (instance_id, reason, submitted_by)
        SELECT d.id, cancel_all.reason, d.submitted_by FROM doomed d
        RETURNING instance_id
    )
    SELECT array_agg(r.instance_id::text ORDER BY r.instance_id) INTO v_ids FROM requested r;
    PERFORM pg_notify('df_work', 'cancel ' || x) FROM unnest(v_ids) AS x;
    RETURN coalesce(cardinality(v_ids), 0);
END
$$;

------------------------------------------------------------------------------------------------------------
-- Retention (run by the workers)
------------------------------------------------------------------------------------------------------------

-- Delete up to retention_batch terminal instances whose age (completed_at, else updated_at) exceeds
-- retention_days, oldest first, skipping rows locked by others; returns how many. Owner-only (EXECUTE is
-- revoked from PUBLIC); SECURITY DEFINER so that a role the owner grants EXECUTE prunes every role's instances.
-- (created_at <= the age, so the created_at bound lets instances_status_created_idx narrow the scan without an
-- index on updated_at, which every checkpoint write changes.)
CREATE FUNCTION df._prune() RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_days jsonb;
    v_batch jsonb;
    v_cutoff timestamptz;
    v_count integer;
BEGIN
    SELECT s.value INTO v_days FROM df.settings s WHERE s.key = 'retention_days';
    SELECT s.value INTO v_batch FROM df.settings s WHERE s.key = 'retention_batch';
    IF v_days IS NULL OR v_days = 'null' THEN
        RETURN 0;
    END IF;
    IF jsonb_typeof(v_days) <> 'number' OR v_days::numeric < 0 THEN
        RAISE EXCEPTION 'df.settings retention_days must be a number of days >= 0 or null, got %', v_days
            USING ERRCODE = '22023';
    END IF;
    v_batch := coalesce(v_batch, '1000');
    IF jsonb_typeof(v_batch) <> 'number' OR v_batch::numeric < 1 OR v_batch::numeric <> trunc(v_batch::numeric)
       OR v_batch::numeric > 2147483647 THEN
        RAISE EXCEPTION 'df.settings retention_batch must be a whole number >= 1, got %', v_batch
            USING ERRCODE = '22023';
    END IF;
    v_cutoff := now() - v_days::numeric * interval '1 day';
    WITH doomed AS (
        SELECT i.id FROM df.instances i
         WHERE i.status IN ('completed', 'failed', 'cancelled')
           AND i.created_at < v_cutoff
           AND coalesce(i.completed_at, i.updated_at) < v_cutoff
         ORDER BY coalesce(i.completed_at, i.updated_at), i.id
         LIMIT v_batch::integer
           FOR UPDATE SKIP LOCKED
    )
    DELETE FROM df.instances i USING doomed d WHERE i.id = d.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
REVOKE EXECUTE ON FUNCTION df._prune() FROM PUBLIC;

------------------------------------------------------------------------------------------------------------
-- Grants: the new column and table (df.grant_usage and df.revoke_usage keep their signatures and 0003's bodies,
-- plus idempotency_key and df.delete_requests)
------------------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false,
                                          with_grant boolean DEFAULT false)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_opt constant text := CASE WHEN with_grant THEN ' WITH GRANT OPTION' ELSE '' END;
    v_to constant text := format(' TO %I', p_role) || v_opt;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA df' || v_to;
    IF include_http THEN
        EXECUTE 'GRANT EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer),'
                ' df.http_multipart(text, text, jsonb, jsonb, integer)' || v_to;
    END IF;
    IF with_grant THEN
        EXECUTE 'GRANT EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text),'
                ' df.metrics()' || v_to;
    END IF;
    EXECUTE 'GRANT SELECT ON df.instances, df.nodes, df.signals, df.cancel_requests' || v_to;
    EXECUTE 'GRANT INSERT (id, label, root_node, submitted_by, database, graph, graph_format, vars, idempotency_key)'
            ' ON df.instances' || v_to;
    EXECUTE 'GRANT INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by,'
            ' database) ON df.nodes' || v_to;
    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars' || v_to;
    EXECUTE 'GRANT INSERT (instance_id, signal_name, payload, submitted_by) ON df.signals' || v_to;
    EXECUTE 'GRANT INSERT (instance_id, reason, submitted_by) ON df.cancel_requests' || v_to;
    EXECUTE 'GRANT INSERT (instance_id, submitted_by) ON df.delete_requests' || v_to;
    IF lower(p_role) <> 'public' THEN
        PERFORM df._install_runner(p_role);
    END IF;
    RAISE NOTICE 'pgdurable: granted df usage privileges to "%"', p_role;
END
$$;

CREATE OR REPLACE FUNCTION df.revoke_usage(p_role text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from constant text := format(' FROM %I CASCADE', p_role);
    v_function text;
BEGIN
    EXECUTE 'REVOKE ALL ON df.instances, df.nodes, df.vars, df.signals, df.cancel_requests, df.delete_requests'
            || v_from;
    FOREACH v_function IN ARRAY ARRAY['df.http(text, text, text, jsonb, integer)',
                                      'df.http_multipart(text, text, jsonb, jsonb, integer)',
                                      'df.grant_usage(text, boolean, boolean)', 'df.revoke_usage(text)',
                                      'df.metrics()'] LOOP
        BEGIN
            EXECUTE 'REVOKE EXECUTE ON FUNCTION ' || v_function || v_from;
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END LOOP;
    EXECUTE 'REVOKE USAGE ON SCHEMA df' || v_from;
    IF lower(p_role) <> 'public' THEN
        PERFORM df._drop_runner(p_role);
    END IF;
    RAISE NOTICE 'pgdurable: revoked df usage privileges from "%"', p_role;
END
$$;

-- Roles (and PUBLIC) that may already start instances get the new column and table, with the grant option
-- where they hold it.
DO $$
DECLARE
    v_grantee oid;
    v_grantable boolean;
    v_to text;
BEGIN
    FOR v_grantee, v_grantable IN
        SELECT a.grantee, bool_or(a.is_grantable)
          FROM pg_catalog.pg_attribute att, pg_catalog.aclexplode(att.attacl) AS a
         WHERE att.attrelid = 'df.instances'::regclass AND att.attname = 'graph' AND a.privilege_type = 'INSERT'
           AND a.grantee <> (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = 'df.instances'::regclass)
         GROUP BY a.grantee
    LOOP
        v_to := ' TO ' || CASE WHEN v_grantee = 0 THEN 'PUBLIC' ELSE v_grantee::regrole::text END
                || CASE WHEN v_grantable THEN ' WITH GRANT OPTION' ELSE '' END;
        EXECUTE 'GRANT INSERT (idempotency_key) ON df.instances' || v_to;
        EXECUTE 'GRANT INSERT (instance_id, submitted_by) ON df.delete_requests' || v_to;
    END LOOP;
END
$$;
