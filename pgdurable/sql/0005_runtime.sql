-- 0005_runtime: what the worker needs — work items, history, step runners — written only by the df owner.
--
-- Users never touch these tables. df.start, df.signal and df.cancel insert rows that users may insert; the
-- triggers below (SECURITY DEFINER, owned by the df owner) turn those rows into work items.

-- Work items: one row per live frame that needs a worker (a step to run, a timer to fire), plus 'start'
-- and 'inbox' items per instance. A claim sets a lease and bumps lease_gen; a step commits only if its
-- lease_gen is still current (the fence).
CREATE TABLE df.tasks (
    instance_id   varchar(8) NOT NULL REFERENCES df.instances (id) ON DELETE CASCADE,
    frame         text NOT NULL,
    kind          text NOT NULL
        CONSTRAINT tasks_kind_chk
        CHECK (kind IN ('start', 'inbox', 'sql', 'http', 'http_multipart', 'call', 'timer')),
    function      text,  -- of a 'call': only workers that registered this Python function claim it
    wake_at       timestamptz NOT NULL DEFAULT now(),
    lease_owner   uuid,
    lease_expires timestamptz,
    lease_gen     bigint NOT NULL DEFAULT 0,
    backend_pid   integer,
    claims        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, frame)
);
CREATE INDEX tasks_due_idx ON df.tasks ((kind = 'start'), wake_at);
ALTER TABLE df.tasks ENABLE ROW LEVEL SECURITY;

-- History: every event folded into an instance's checkpoint, in order. `xid` is the transaction that
-- recorded it, so a step's side effects can be tied to its checkpoint.
CREATE TABLE df.history (
    instance_id varchar(8) NOT NULL REFERENCES df.instances (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    event       text NOT NULL,
    xid         xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (instance_id, seq)
);
ALTER TABLE df.history ENABLE ROW LEVEL SECURITY;

-- What an instance waits for: a worker, a timer, a signal (shown by df.instance_info and the client).
ALTER TABLE df.instances ADD COLUMN waiting_for text;

-- Work item triggers: a new instance needs starting; a signal or cancel needs delivering.
CREATE FUNCTION df._enqueue_start() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO df.tasks (instance_id, frame, kind) VALUES (NEW.id, '~start', 'start');
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION df._enqueue_start() FROM PUBLIC;
CREATE TRIGGER instances_enqueue_start AFTER INSERT ON df.instances
    FOR EACH ROW EXECUTE FUNCTION df._enqueue_start();

CREATE FUNCTION df._enqueue_inbox() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO df.tasks (instance_id, frame, kind) VALUES (NEW.instance_id, '~inbox', 'inbox')
    ON CONFLICT (instance_id, frame) DO UPDATE SET wake_at = least(df.tasks.wake_at, now());
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION df._enqueue_inbox() FROM PUBLIC;
CREATE TRIGGER signals_enqueue AFTER INSERT ON df.signals
    FOR EACH ROW EXECUTE FUNCTION df._enqueue_inbox();
CREATE TRIGGER cancel_requests_enqueue AFTER INSERT ON df.cancel_requests
    FOR EACH ROW EXECUTE FUNCTION df._enqueue_inbox();

-- Step runners: df_exec.run_<role oid>, one per application role, owned by that role and SECURITY
-- DEFINER, so a step runs with exactly its submitter's privileges on the worker's own connection.
-- (schema df_exec is created by the migration runner, owned by the df owner, like df)
REVOKE ALL ON SCHEMA df_exec FROM PUBLIC;

-- The runner's body for a role. Inside a SECURITY DEFINER function PostgreSQL refuses SET ROLE, SET
-- SESSION AUTHORIZATION and transaction control, so a step cannot leave the submitter's identity.
CREATE FUNCTION df._runner_body(p_role name) RETURNS text
    LANGUAGE sql IMMUTABLE
AS $body$ SELECT format($src$
DECLARE
    v_types text[];
    v_rows text[] := '{}';
    v_bytes bigint := 0;
    v_row text;
    v_rec record;
BEGIN
    -- the owner could flip this function to SECURITY INVOKER: then it would run as the worker
    IF current_user OPERATOR(pg_catalog.<>) %1$L::name THEN
        RAISE EXCEPTION 'pgdurable step runner for %% called as %%', %1$L, current_user
            USING ERRCODE = '42501';
    END IF;
    PERFORM pg_catalog.set_config(split_part(s.setting, '=', 1), substr(s.setting, strpos(s.setting, '=') + 1), true)
       FROM pg_catalog.pg_db_role_setting d, unnest(d.setconfig) AS s(setting)
      WHERE d.setrole = %1$L::regrole AND d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                                                                 WHERE datname = pg_catalog.current_database()))
      ORDER BY d.setdatabase;
    PERFORM pg_catalog.set_config('intervalstyle', 'iso_8601', true);
    PERFORM pg_catalog.set_config('pgdurable.in_workflow', 'on', true);
    BEGIN
        EXECUTE 'PREPARE pgdurable_step_probe AS ' || p_sql;
    EXCEPTION WHEN syntax_error THEN
        -- not a preparable statement (DDL, utility) or a real syntax error: run it and let it speak
        EXECUTE p_sql;
        RETURN '{"types":null,"rows":[]}';
    END;
    SELECT pg_catalog.array_agg(b.typname::text ORDER BY u.ord) INTO v_types
      FROM pg_catalog.pg_prepared_statements p,
           unnest(p.result_types) WITH ORDINALITY AS u(typ, ord),
           pg_catalog.pg_type t, pg_catalog.pg_type b
     WHERE p.name = 'pgdurable_step_probe' AND t.oid = u.typ
       AND b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END;
    DEALLOCATE pgdurable_step_probe;
    IF v_types IS NULL THEN
        EXECUTE p_sql;
        RETURN '{"types":null,"rows":[]}';
    END IF;
    FOR v_rec IN EXECUTE p_sql LOOP
        v_row := pg_catalog.row_to_json(v_rec)::text;
        v_bytes := v_bytes + pg_catalog.octet_length(v_row) + 1;
        IF v_bytes > p_max_bytes THEN
            RAISE EXCEPTION 'result exceeds the size limit of %% bytes', p_max_bytes USING ERRCODE = '54000';
        END IF;
        v_rows := v_rows || v_row;
    END LOOP;
    RETURN '{"types":' || pg_catalog.to_json(v_types)::text || ',"rows":['
           || pg_catalog.array_to_string(v_rows, ',') || ']}';
END
$src$, p_role) $body$;

-- Create (or replace) the runner of a role, for df.grant_usage. The caller must be able to act as that
-- role — a superuser, or on PostgreSQL 16+ a CREATEROLE role with ADMIN on it — since the role owns it.
-- CREATE on df_exec is granted to the role and revoked again within this transaction, so no role can
-- create functions there on its own.
CREATE FUNCTION df._install_runner(p_role text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role constant regrole := (SELECT r.oid FROM pg_roles r WHERE r.rolname = p_role)::regrole;
    v_name constant text := format('df_exec.%I', 'run_' || v_role::oid);
    v_signature constant text := v_name || '(text, bigint)';
    v_worker constant regrole := (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'df')::regrole;
BEGIN
    IF v_role IS NULL THEN
        RAISE EXCEPTION 'role "%" does not exist', p_role USING ERRCODE = '42704';
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION %s(p_sql text, p_max_bytes bigint) RETURNS text '
                   'LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS %L', v_name, df._runner_body(v_role::name));
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_signature);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', v_signature, v_worker);
    BEGIN
        EXECUTE format('GRANT CREATE ON SCHEMA df_exec TO %s', v_role);
        EXECUTE format('ALTER FUNCTION %s OWNER TO %s', v_signature, v_role);
        EXECUTE format('REVOKE CREATE ON SCHEMA df_exec FROM %s', v_role);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'df.grant_usage: % cannot create the step runner of role %: %', current_user, v_role, SQLERRM
            USING ERRCODE = '42501',
                  HINT = 'The runner is owned by the role, so df.grant_usage must run as a member of it: a superuser, '
                         'or (PostgreSQL 16+) a CREATEROLE role that has ADMIN on it.';
    END;
END
$$;
REVOKE EXECUTE ON FUNCTION df._install_runner(text) FROM PUBLIC;

CREATE FUNCTION df._drop_runner(p_role text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_oid constant oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = p_role);
BEGIN
    IF v_oid IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION IF EXISTS df_exec.%I(text, bigint)', 'run_' || v_oid);
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._drop_runner(text) FROM PUBLIC;

-- Roles prepared before this version get their runner now.
DO $$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT r.rolname FROM pg_roles r
         WHERE pg_catalog.has_schema_privilege(r.oid, 'df', 'USAGE') AND r.rolname NOT LIKE 'pg\_%'
           AND r.oid <> (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'df') AND NOT r.rolsuper
    LOOP
        PERFORM df._install_runner(v_role);
    END LOOP;
END
$$;
