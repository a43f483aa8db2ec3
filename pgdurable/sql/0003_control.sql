-- 0003_control: starting instances, workflow variables, status, signals, cancellation, grants, version.
--
-- df.start, df.signal and df.cancel are SECURITY INVOKER: current_user is the submitter, and they only
-- insert, in the caller's transaction (a rollback leaves nothing). A NOTIFY on channel df_work (payload
-- '<verb> <instance id>') tells workers after commit.

-- pg_durable's guard against mistakes inside workflow steps (the runner sets it); not a security boundary.
CREATE FUNCTION df._refuse_in_workflow(p_function text) RETURNS void
    LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF current_setting('pgdurable.in_workflow', true) = 'on' THEN
        RAISE EXCEPTION '% cannot be called inside a workflow', p_function USING ERRCODE = '0A000';
    END IF;
END
$$;

-- What df.status reports: the row's status, or 'cancelled' while a cancel request waits for the worker.
CREATE FUNCTION df._effective_status(p_id text, p_status text) RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN p_status IN ('pending', 'running')
                     AND EXISTS (SELECT 1 FROM df.cancel_requests c WHERE c.instance_id = p_id)
                THEN 'cancelled' ELSE p_status END
$$;

-- The output shown by the monitoring functions: the stored output, or 'cancelled: <reason>' while a cancel
-- request is pending.
CREATE FUNCTION df._effective_output(p_id text, p_status text, p_output text) RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN p_status IN ('pending', 'running')
                THEN coalesce((SELECT 'cancelled: ' || c.reason FROM df.cancel_requests c
                                WHERE c.instance_id = p_id ORDER BY c.id LIMIT 1), p_output)
                ELSE p_output END
$$;

------------------------------------------------------------------------------------------------------------
-- df.start
------------------------------------------------------------------------------------------------------------

-- The root graph of df.start's argument (reference §3.3, strict variant): a JSON object with a string
-- node_type is a graph and must validate; any other text is a single SQL node.
CREATE FUNCTION df._root_graph(p_fut text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    -- JSON that jsonb cannot hold (a \u0000 escape) is a graph with a NUL in a string, not SQL text
    IF p_fut ~ '^[ \t\n\r]*\{' AND p_fut ~* '\\u0000' AND df._parse_envelope(p_fut) IS NULL THEN
        RAISE EXCEPTION 'Invalid durable function: root: strings may not contain NUL (\u0000)'
            USING ERRCODE = '22023';
    END IF;
    RETURN coalesce(df._parse_envelope(p_fut), jsonb_build_object('node_type', 'SQL', 'query', p_fut));
END
$$;

-- Validate a graph for df.start (raises 'Invalid durable function: <path>: <problem>').
CREATE FUNCTION df._validated(g jsonb) RETURNS df._graph
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN df._walk(g, true);
EXCEPTION WHEN SQLSTATE 'DFG01' THEN
    RAISE EXCEPTION 'Invalid durable function: %', SQLERRM USING ERRCODE = '22023';
END
$$;

-- The rows of df.nodes for a walked graph (reference §4.2): random distinct 8-hex ids, children as ids,
-- condition and extra children as ids inside the query JSON.
CREATE TYPE df._flat_node AS (
    ord integer, id text, node_type text, query text, result_name text, left_node text, right_node text
);

CREATE FUNCTION df._flatten(g df._graph) RETURNS SETOF df._flat_node
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    n constant integer := cardinality(g.types);
    v_ids text[];
BEGIN
    LOOP
        v_ids := ARRAY(SELECT right(gen_random_uuid()::text, 8) FROM generate_series(1, n));
        EXIT WHEN (SELECT count(DISTINCT x) FROM unnest(v_ids) AS x) = n;
    END LOOP;
    RETURN QUERY
    SELECT i, v_ids[i], g.types[i],
           CASE
               WHEN g.conds[i] IS NOT NULL
                   THEN '{"condition_node":' || to_json(v_ids[g.conds[i]])::text || '}'
               WHEN g.extras[i] IS NOT NULL
                   THEN '{"extra_nodes":['
                        || (SELECT string_agg(to_json(v_ids[e::integer])::text, ',' ORDER BY o)
                              FROM unnest(string_to_array(g.extras[i], ',')) WITH ORDINALITY AS u(e, o))
                        || ']}'
               ELSE g.queries[i]
           END,
           g.names[i], v_ids[g.lefts[i]], v_ids[g.rights[i]]
      FROM generate_series(1, n) AS i;
END
$$;

-- The checks on the submitting identity (reference §1.2 step 4).
CREATE FUNCTION df._check_submitter(p_role regrole) RETURNS void
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_login boolean;
    v_super boolean;
BEGIN
    SELECT r.rolcanlogin, r.rolsuper INTO v_login, v_super FROM pg_catalog.pg_roles r WHERE r.oid = p_role;
    IF NOT v_login THEN
        RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege', p_role::text
            USING ERRCODE = '42501',
                  DETAIL = 'Workflow steps run as the submitting role, which must be able to log in.',
                  HINT = 'Submit as a LOGIN role, or ALTER ROLE ... LOGIN.';
    END IF;
    IF v_super AND NOT df._superuser_instances_allowed() THEN
        RAISE EXCEPTION 'current_user "%" is a superuser: superuser instances are disabled', p_role::text
            USING ERRCODE = '42501',
                  HINT = 'Submit as an application role, or set allow_superuser_instances in df.settings.';
    END IF;
END
$$;

-- Insert one instance and its nodes; returns the instance id. Runs as the caller (caller mode, under RLS)
-- or as the owner (df._start_as, for transaction_mode 'new').
CREATE FUNCTION df._insert_instance(p_role regrole, p_graph df._graph, p_label text, p_database text,
                                    p_vars jsonb DEFAULT '{}')
    RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_id text;
    v_root text;
    v_canonical constant text := df._render(p_graph);
    v_vars jsonb;
    v_rows df._flat_node[];
BEGIN
    SELECT array_agg(f ORDER BY f.ord) INTO v_rows FROM df._flatten(p_graph) AS f;
    v_root := v_rows[1].id;
    SELECT coalesce(jsonb_object_agg(v.name, v.value) FILTER (WHERE v.value IS NOT NULL), '{}') || p_vars
      INTO v_vars FROM df.vars v WHERE v.owner = p_role;
    FOR attempt IN 1..10 LOOP
        INSERT INTO df.instances AS i (id, label, root_node, submitted_by, database, graph, graph_format, vars)
        VALUES (right(gen_random_uuid()::text, 8), p_label, v_root, p_role, p_database, v_canonical, 1, v_vars)
        ON CONFLICT (id) DO NOTHING
        RETURNING i.id INTO v_id;
        EXIT WHEN v_id IS NOT NULL;
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

-- transaction_mode => 'new', loopback side: runs in the dblink session of the loopback role (the only
-- grantee besides the df owner: pgdurable init grants it to pgdurable_loopback) and submits on behalf of
-- p_role, which df._start_new has vetted.
CREATE FUNCTION df._start_as(p_role regrole, p_graph text, p_label text, p_database text) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM df._check_submitter(p_role);
    RETURN df._insert_instance(p_role, df._validated(p_graph::jsonb), p_label, p_database);
END
$$;
REVOKE EXECUTE ON FUNCTION df._start_as(regrole, text, text, text) FROM PUBLIC;

-- transaction_mode => 'new', caller side: an autonomous commit through dblink and the loopback conninfo
-- of df.settings. p_role (the caller's current_user) must be a role that session_user may act as.
CREATE FUNCTION df._start_new(p_role regrole, p_graph text, p_label text, p_database text) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_conninfo text;
    v_dblink name;
    v_id text;
    v_detail text;
BEGIN
    IF NOT pg_has_role(session_user, p_role, 'MEMBER') THEN
        RAISE EXCEPTION 'df.start: transaction_mode ''new'' can only submit as a role of the session user'
            USING ERRCODE = '42501';
    END IF;
    SELECT s.value #>> '{}' INTO v_conninfo FROM df.settings s WHERE s.key = 'new_transaction_conninfo';
    IF v_conninfo IS NULL OR v_conninfo = '' THEN
        RAISE EXCEPTION 'df.start: transaction_mode ''new'' is not configured'
            USING ERRCODE = '55000',
                  HINT = 'Set new_transaction_conninfo in df.settings to a libpq conninfo, with a password, of a '
                         'role with EXECUTE on df._start_as (pgdurable init sets up pgdurable_loopback on the '
                         'embedded default), or start from a separate connection.';
    END IF;
    SELECT n.nspname INTO v_dblink
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink';
    IF v_dblink IS NULL THEN
        RAISE EXCEPTION 'df.start: transaction_mode ''new'' needs the dblink extension in this database'
            USING ERRCODE = '55000', HINT = 'CREATE EXTENSION dblink; (as a superuser), then run pgdurable init.';
    END IF;
    BEGIN
        EXECUTE format('SELECT t.id FROM %I.dblink($1, $2) AS t(id text)', v_dblink)
           INTO v_id
          USING v_conninfo,
                format('SET lock_timeout = ''30s''; SET statement_timeout = ''30s''; '
                       'SELECT df._start_as(%L::regrole, %L, %L, %L)',
                       p_role::oid::text, p_graph, p_label, p_database);
    EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection THEN
        GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION 'df.start: transaction_mode ''new'' could not log in with new_transaction_conninfo: %',
            SQLERRM
            USING ERRCODE = '08001', DETAIL = coalesce(v_detail, ''),
                  HINT = 'Check new_transaction_conninfo in df.settings, or run pgdurable init again.';
    END;
    RETURN v_id;
END
$$;
-- (EXECUTE stays with PUBLIC: df.start runs as the caller and calls it; the pg_has_role check above is the
-- guard.)

-- The body of df.start and df.start_with; `p_vars` (pgdurable extension) overrides the snapshot's values.
CREATE FUNCTION df._start(p_fut text, p_label text, p_database text, p_mode text, p_vars jsonb) RETURNS text
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
        RETURN df._start_new(df._me(), df._render(v_graph), p_label, p_database);
    END IF;
    RETURN df._insert_instance(df._me(), v_graph, p_label, p_database, p_vars);
END
$$;

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller') RETURNS text
    LANGUAGE sql VOLATILE
AS $$ SELECT df._start(fut, label, database, transaction_mode, '{}') $$;

-- pgdurable extension: df.start with options pg_durable lacks, as one jsonb: label, database,
-- transaction_mode, and vars (an object of strings that override the caller's df.vars in the snapshot).
CREATE FUNCTION df.start_with(graph text, options jsonb DEFAULT '{}') RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    c_known constant text[] := ARRAY['label', 'database', 'transaction_mode', 'vars'];
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
    RETURN df._start(graph, v_options ->> 'label', v_options ->> 'database',
                     coalesce(v_options ->> 'transaction_mode', 'caller'), v_vars);
END
$$;

------------------------------------------------------------------------------------------------------------
-- Workflow variables (reference §1.3)
------------------------------------------------------------------------------------------------------------

CREATE FUNCTION df.setvar(name text, value text) RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
#variable_conflict use_column
BEGIN
    PERFORM df._refuse_in_workflow('df.setvar');
    INSERT INTO df.vars AS v (name, value, owner) VALUES (setvar.name, setvar.value, df._me())
    ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value;
    PERFORM df._mark_helper('df.setvar');
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.getvar(name text) RETURNS text
    LANGUAGE sql STABLE STRICT
AS $$ SELECT v.value FROM df.vars v WHERE v.owner = df._me() AND v.name = getvar.name $$;

CREATE FUNCTION df.unsetvar(name text) RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
#variable_conflict use_column
BEGIN
    PERFORM df._refuse_in_workflow('df.unsetvar');
    DELETE FROM df.vars v WHERE v.owner = df._me() AND v.name = unsetvar.name;
    PERFORM df._mark_helper('df.unsetvar');
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.clearvars() RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
BEGIN
    PERFORM df._refuse_in_workflow('df.clearvars');
    DELETE FROM df.vars v WHERE v.owner = df._me();
    PERFORM df._mark_helper('df.clearvars');
    RETURN 'OK';
END
$$;

------------------------------------------------------------------------------------------------------------
-- Status, result, await, signal, cancel (reference §1.2)
------------------------------------------------------------------------------------------------------------

CREATE FUNCTION df.status(instance_id text) RETURNS text
    LANGUAGE sql STABLE STRICT
AS $$ SELECT df._effective_status(i.id, i.status) FROM df.instances i WHERE i.id = status.instance_id $$;

CREATE FUNCTION df.result(instance_id text) RETURNS text
    LANGUAGE sql STABLE STRICT
AS $$
    SELECT n.result::text
      FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
     WHERE i.id = result.instance_id AND n.status = 'completed'
$$;

CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
DECLARE
    v_deadline constant timestamptz := clock_timestamp() + make_interval(secs => timeout_seconds);
    v_status text;
BEGIN
    PERFORM df._refuse_in_workflow('df.await_instance');
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'df.await_instance: timeout_seconds must be > 0, got %', timeout_seconds
            USING ERRCODE = '22023';
    END IF;
    PERFORM df._mark_helper('df.await_instance');
    LOOP
        v_status := df.status(instance_id);
        IF v_status IS NULL THEN
            RAISE EXCEPTION 'Instance not found: %', instance_id USING ERRCODE = 'P0002';
        ELSIF v_status IN ('completed', 'failed', 'cancelled') THEN
            RETURN v_status;
        ELSIF clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'df.await_instance: instance % did not finish within % seconds (status: %)',
                instance_id, timeout_seconds, v_status USING ERRCODE = '57014';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

CREATE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}') RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
DECLARE
    v_instance df.instances;
    v_status text;
BEGIN
    IF instance_id = '' THEN
        RAISE EXCEPTION 'df.signal: instance_id must not be empty' USING ERRCODE = '22023';
    ELSIF signal_name = '' THEN
        RAISE EXCEPTION 'df.signal: signal_name must not be empty' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_instance FROM df.instances i WHERE i.id = signal.instance_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', instance_id USING ERRCODE = '42501';
    END IF;
    v_status := df._effective_status(v_instance.id, v_instance.status);
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
        RETURN format('Failed to send signal: instance %s is %s', instance_id, v_status);
    END IF;
    INSERT INTO df.signals (instance_id, signal_name, payload, submitted_by)
    VALUES (v_instance.id, signal_name, coalesce(df._try_jsonb(signal_data), to_jsonb(signal_data)),
            v_instance.submitted_by);
    PERFORM pg_notify('df_work', 'signal ' || v_instance.id);
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user') RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
DECLARE
    v_instance df.instances;
BEGIN
    SELECT * INTO v_instance FROM df.instances i WHERE i.id = cancel.instance_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', instance_id USING ERRCODE = '42501';
    END IF;
    -- terminal instances stay as they are (idempotent), as in pg_durable
    IF df._effective_status(v_instance.id, v_instance.status) IN ('pending', 'running') THEN
        INSERT INTO df.cancel_requests (instance_id, reason, submitted_by)
        VALUES (v_instance.id, reason, v_instance.submitted_by);
        PERFORM pg_notify('df_work', 'cancel ' || v_instance.id);
    END IF;
    RETURN format('Instance %s cancelled: %s', instance_id, reason);
END
$$;

------------------------------------------------------------------------------------------------------------
-- Administration (reference §1.5). Deliberate difference: no UPDATE (status, updated_at) for users.
------------------------------------------------------------------------------------------------------------

CREATE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false)
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
    EXECUTE 'GRANT INSERT (id, label, root_node, submitted_by, database, graph, graph_format, vars)'
            ' ON df.instances' || v_to;
    EXECUTE 'GRANT INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by,'
            ' database) ON df.nodes' || v_to;
    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars' || v_to;
    EXECUTE 'GRANT INSERT (instance_id, signal_name, payload, submitted_by) ON df.signals' || v_to;
    EXECUTE 'GRANT INSERT (instance_id, reason, submitted_by) ON df.cancel_requests' || v_to;
    IF lower(p_role) <> 'public' THEN
        PERFORM df._install_runner(p_role);
    END IF;
    RAISE NOTICE 'pgdurable: granted df usage privileges to "%"', p_role;
END
$$;

CREATE FUNCTION df.revoke_usage(p_role text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from constant text := format(' FROM %I CASCADE', p_role);
    v_function text;
BEGIN
    EXECUTE 'REVOKE ALL ON df.instances, df.nodes, df.vars, df.signals, df.cancel_requests' || v_from;
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

CREATE FUNCTION df.schema_version() RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT max(m.version) FROM df.schema_migrations m $$;

CREATE FUNCTION df.version() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'pgdurable ' || m.package_version || ' (schema ' || m.version || ')'
      FROM df.schema_migrations m ORDER BY m.version DESC LIMIT 1
$$;

REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df.revoke_usage(text) FROM PUBLIC;
