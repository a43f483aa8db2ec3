-- 0006_security: the step runner hardened, runners re-installed, and caller checks for the SECURITY DEFINER
-- functions that lacked one (issue 8; docs/security.md is the threat model).
--
-- The worker may be a superuser, and it runs every step on its own connection inside the submitter's runner
-- (design §2). So whatever a step leaves behind in that session or transaction, and whatever runs after
-- the runner returns, runs as the worker. The runner therefore ends every step by undoing all of it:
--
-- - deferred triggers fire inside the runner, as the submitter (SET CONSTRAINTS ALL IMMEDIATE), not at the
--   worker's COMMIT: before PostgreSQL 18 a deferred trigger ran as whoever was current_user at COMMIT;
-- - no cursor outlives it (a step that leaves one open is failed): a WITH HOLD cursor is run to completion
--   at COMMIT, as the worker;
-- - a step that made its transaction read-only is failed: the worker's own writes could not commit;
-- - the worker's own prepared statements (its driver prepares every statement, by name, on the session)
--   are as they were: a step that replaced one would have the worker run the step's SQL. A step that
--   changed them is failed; its rollback makes the driver forget and deallocate them all;
-- - settings (RESET ALL), LISTEN, the step's prepared statements, temporary objects and session advisory
--   locks are gone before the worker's statements run, and before the next step (of any role) on that
--   connection.
--
-- It also re-checks, at every step, that its role may still run steps (LOGIN; superuser only if allowed),
-- and applies the role's own settings as a login would, without the worker's.

------------------------------------------------------------------------------------------------------------
-- The runner
------------------------------------------------------------------------------------------------------------

-- The body of the runner of the role with oid p_role. It runs with the submitter's search_path (it has no
-- SET clause, so that the role's own search_path applies to the step), so every name and operator it uses
-- itself is schema-qualified: neither the submitter nor anyone who can create objects on its search_path can
-- redirect the checks below.
CREATE FUNCTION df._runner_body(p_role oid) RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $body$ SELECT pg_catalog.format($src$
DECLARE
    c_role constant oid := %1$s;
    v_me oid;
    v_login boolean;
    v_super boolean;
    v_name text;
    v_value text;
    v_path_set boolean := false;
    v_path text;
    v_prepared boolean := true;
    v_types text[];
    v_rows text[] := '{}';
    v_bytes bigint := 0;
    v_row text;
    v_rec record;
    v_out text;
    v_statements text;
    v_statement_names text[];
BEGIN
    -- 1. Identity. The owner could flip this function to SECURITY INVOKER (it would then run as the worker),
    --    or a superuser could hand it to another role: either way current_user is not the role it was made for.
    SELECT r.oid, r.rolcanlogin, r.rolsuper INTO v_me, v_login, v_super
      FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user;
    IF v_me IS NULL OR v_me OPERATOR(pg_catalog.<>) c_role THEN
        RAISE EXCEPTION 'pgdurable step runner of role %% called as %%', c_role::pg_catalog.regrole, current_user
            USING ERRCODE = '42501';
    END IF;

    -- 2. The role may still run steps. The worker checks this when it claims work; consecutive steps of an
    --    instance are not claimed again, so the runner checks it at every step.
    IF NOT v_login THEN
        RAISE EXCEPTION 'role "%%" does not have LOGIN privilege any more', current_user
            USING ERRCODE = '42501',
                  DETAIL = 'Workflow steps run as the submitting role, which must be able to log in.';
    END IF;
    IF v_super AND NOT df._superuser_instances_allowed() THEN
        RAISE EXCEPTION 'role "%%" is a superuser: superuser instances are disabled', current_user
            USING ERRCODE = '42501', HINT = 'Set allow_superuser_instances in df.settings to allow them.';
    END IF;

    -- 3. The session's prepared statements before the step: the worker's, which must stay as they are.
    --    (They survive rollbacks. The probe below cannot be left over: the runner removes what a step
    --    prepared, and a rollback makes the worker's driver deallocate everything.)
    --    A statement prepared again under the same name has a later prepare_time (and from_sql).
    SELECT coalesce(pg_catalog.string_agg(pg_catalog.format('%%L %%s %%s', p.name, EXTRACT(epoch FROM p.prepare_time), p.from_sql),
                                          ',' ORDER BY p.name), ''),
           coalesce(pg_catalog.array_agg(p.name), '{}')
      INTO v_statements, v_statement_names
      FROM pg_catalog.pg_prepared_statements p;

    -- 4. Settings, as a login as the role would have them: the role's own (ALTER ROLE ... SET, then
    --    ... IN DATABASE), and for search_path the database's (or every role's) default where the role has
    --    none, so that the worker's own settings do not leak into the step. A setting that only a superuser
    --    may make (made by one for the role), or that is fixed at connection start, is skipped.
    FOR v_name, v_value IN
        SELECT pg_catalog.split_part(s.setting, '=', 1),
               pg_catalog.substr(s.setting, pg_catalog.strpos(s.setting, '=') OPERATOR(pg_catalog.+) 1)
          FROM pg_catalog.pg_db_role_setting d,
               pg_catalog.unnest(d.setconfig) WITH ORDINALITY AS s(setting, n)
         WHERE d.setdatabase OPERATOR(pg_catalog.=) ANY (ARRAY[0::oid, (
                   SELECT db.oid FROM pg_catalog.pg_database db
                    WHERE db.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())])
           AND (d.setrole OPERATOR(pg_catalog.=) c_role
                OR (d.setrole OPERATOR(pg_catalog.=) 0::oid AND pg_catalog.starts_with(s.setting, 'search_path=')))
         ORDER BY d.setrole OPERATOR(pg_catalog.<>) 0::oid, d.setdatabase, s.n
    LOOP
        BEGIN
            PERFORM pg_catalog.set_config(v_name, v_value, true);
        EXCEPTION WHEN insufficient_privilege OR cant_change_runtime_param THEN
            NULL;
        END;
        v_path_set := v_path_set OR v_name OPERATOR(pg_catalog.=) 'search_path';
    END LOOP;
    IF NOT v_path_set
       AND pg_catalog.current_setting('search_path') OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog, pg_temp',
                                                                                   'pg_catalog,pg_temp']) THEN
        -- a worker that pins its own search_path: the step gets the server's default instead
        SELECT s.boot_val INTO v_path FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) 'search_path';
        PERFORM pg_catalog.set_config('search_path', v_path, true);
    END IF;
    PERFORM pg_catalog.set_config('intervalstyle', 'iso_8601', true);
    PERFORM pg_catalog.set_config('pgdurable.in_workflow', 'on', true);

    -- 5. The step. Its rows are materialized and encoded here, as the submitter: never handed back as a
    --    cursor, which would be read after this function returns, as the worker.
    BEGIN
        EXECUTE pg_catalog.concat('PREPARE pgdurable_step_probe AS ', p_sql);
    EXCEPTION WHEN syntax_error THEN
        v_prepared := false;
    END;
    IF NOT v_prepared THEN
        -- not a preparable statement (DDL, utility) or a real syntax error: run it and let it speak
        EXECUTE p_sql;
        v_out := '{"types":null,"rows":[]}';
    ELSE
        SELECT pg_catalog.array_agg(b.typname::text ORDER BY u.ord) INTO v_types
          FROM pg_catalog.pg_prepared_statements p,
               pg_catalog.unnest(p.result_types) WITH ORDINALITY AS u(typ, ord),
               pg_catalog.pg_type t, pg_catalog.pg_type b
         WHERE p.name OPERATOR(pg_catalog.=) 'pgdurable_step_probe' AND t.oid OPERATOR(pg_catalog.=) u.typ
           AND b.oid OPERATOR(pg_catalog.=) CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'd' THEN t.typbasetype
                                                 ELSE t.oid END;
        EXECUTE 'DEALLOCATE pgdurable_step_probe';
        IF v_types IS NULL THEN
            EXECUTE p_sql;
            v_out := '{"types":null,"rows":[]}';
        ELSE
            FOR v_rec IN EXECUTE p_sql LOOP
                v_row := pg_catalog.row_to_json(v_rec)::text;
                v_bytes := v_bytes OPERATOR(pg_catalog.+) pg_catalog.octet_length(v_row) OPERATOR(pg_catalog.+) 1;
                IF v_bytes OPERATOR(pg_catalog.>) p_max_bytes THEN
                    RAISE EXCEPTION 'result exceeds the size limit of %% bytes', p_max_bytes USING ERRCODE = '54000';
                END IF;
                v_rows := pg_catalog.array_append(v_rows, v_row);
            END LOOP;
            v_out := pg_catalog.concat('{"types":', pg_catalog.to_json(v_types)::text, ',"rows":[',
                                       pg_catalog.array_to_string(v_rows, ','), ']}');
        END IF;
    END IF;

    -- 6. Nothing the step started may outlive the runner: what runs after it runs as the worker.
    SET CONSTRAINTS ALL IMMEDIATE;
    IF EXISTS (SELECT FROM pg_catalog.pg_cursors c WHERE c.name OPERATOR(pg_catalog.<>) '') THEN  -- '': the worker's call
        RAISE EXCEPTION 'a step cannot leave a cursor open: it would be read after the step, as the worker'
            USING ERRCODE = '42501';
    END IF;
    IF pg_catalog.current_setting('transaction_read_only') OPERATOR(pg_catalog.=) 'on' THEN
        RAISE EXCEPTION 'a step cannot make its transaction read-only: the worker records the step''s result in it'
            USING ERRCODE = '25006';
    END IF;
    FOR v_name IN SELECT p.name FROM pg_catalog.pg_prepared_statements p
                   WHERE NOT p.name OPERATOR(pg_catalog.=) ANY (v_statement_names) LOOP
        EXECUTE pg_catalog.format('DEALLOCATE %%I', v_name);
    END LOOP;
    IF (SELECT coalesce(pg_catalog.string_agg(pg_catalog.format('%%L %%s %%s', p.name, EXTRACT(epoch FROM p.prepare_time), p.from_sql),
                                               ',' ORDER BY p.name), '')
          FROM pg_catalog.pg_prepared_statements p) OPERATOR(pg_catalog.<>) v_statements THEN
        RAISE EXCEPTION 'a step cannot change the prepared statements of the worker''s session'
            USING ERRCODE = '42501';
    END IF;
    EXECUTE 'RESET ALL';
    IF EXISTS (SELECT FROM pg_catalog.pg_listening_channels()) THEN
        EXECUTE 'UNLISTEN *';
    END IF;
    IF pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0::oid THEN
        -- a temporary table of this step would shadow a table of the same name for the next step, of any role
        EXECUTE 'DISCARD TEMP';
    END IF;
    PERFORM pg_catalog.pg_advisory_unlock_all();
    RETURN v_out;
END
$src$, p_role) $body$;
REVOKE EXECUTE ON FUNCTION df._runner_body(oid) FROM PUBLIC;

-- 0005's body generator took a role name (which broke roles whose names need quotes); nothing else uses it.
DROP FUNCTION df._runner_body(name);

-- Create, or re-create with the current body, the runner of a role (df.grant_usage calls this).
--
-- Who may: a role whose session may act as p_role (SET ROLE: the session user needs the SET option on
-- PostgreSQL 16+, membership before), since p_role creates and owns its runner; and that owns df_exec (the
-- df owner) or is a superuser, since USAGE and CREATE on df_exec are granted to p_role and revoked again within
-- this transaction (so no role ever holds them outside it). The function is created by p_role itself, which grants
-- EXECUTE to the worker (the df owner): created by anyone else and handed over, the grant would be lost when
-- the creator is the worker. An existing runner is dropped first (the owner of df_exec may drop any function
-- in it): a new runner is never a replacement of a function someone else prepared. EXECUTE is not revoked
-- from PUBLIC, so that a delegated admin (with_grant) who lacks these rights learns why from the message.
CREATE OR REPLACE FUNCTION df._install_runner(p_role text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_oid constant oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = p_role);
    v_role constant regrole := v_oid::regrole;
    v_name constant text := format('df_exec.%I', 'run_' || v_oid);
    v_signature constant text := v_name || '(text, bigint)';
    v_worker constant regrole := (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'df')::regrole;
    v_exec_owner constant regrole := (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'df_exec')::regrole;
    v_act constant text := CASE WHEN current_setting('server_version_num')::integer >= 160000 THEN 'SET'
                                ELSE 'MEMBER' END;
    v_previous_role constant text := current_setting('role');
    v_body text;
BEGIN
    IF v_oid IS NULL THEN
        RAISE EXCEPTION 'role "%" does not exist', p_role USING ERRCODE = '42704';
    END IF;
    IF NOT pg_has_role(session_user, v_oid, v_act) THEN
        RAISE EXCEPTION 'df.grant_usage: % cannot create the step runner of role %', session_user, v_role
            USING ERRCODE = '42501',
                  DETAIL = format('A role''s steps run in a function that the role owns, so df.grant_usage must run '
                                  'in a session that can act as %s (SET ROLE %s), as the owner of schema df_exec.',
                                  v_role, v_role),
                  HINT = format('Run it as a superuser; or, on PostgreSQL 16+, logged in as the df owner %s after an '
                                'administrator with ADMIN on %s (a CREATEROLE role that created it) ran: '
                                'GRANT %s TO %s WITH INHERIT FALSE, SET TRUE',
                                v_exec_owner, v_role, v_role, v_exec_owner);
    END IF;
    IF NOT pg_has_role(current_user, v_exec_owner, 'USAGE') THEN
        RAISE EXCEPTION 'df.grant_usage: % cannot create the step runner of role %', current_user, v_role
            USING ERRCODE = '42501',
                  DETAIL = format('Runners live in schema df_exec, owned by %s; only it (or a superuser) may put '
                                  'them there.', v_exec_owner),
                  HINT = format('Run df.grant_usage as %s.', v_exec_owner);
    END IF;
    v_body := df._runner_body(v_oid);
    EXECUTE format('DROP FUNCTION IF EXISTS %s', v_signature);
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA df_exec TO %s', v_role);
    PERFORM set_config('role', p_role, true);
    EXECUTE format('CREATE FUNCTION %s(p_sql text, p_max_bytes bigint) RETURNS text '
                   'LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS %L', v_name, v_body);
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_signature);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', v_signature, v_worker);
    PERFORM set_config('role', v_previous_role, true);
    EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA df_exec FROM %s', v_role);
END
$$;
GRANT EXECUTE ON FUNCTION df._install_runner(text) TO PUBLIC;

-- Every existing runner gets the new body. One this migration cannot re-create (its role cannot be acted as
-- by the installer) is dropped rather than left with the old body: that role's steps then fail with "has no
-- step runner" until df.grant_usage runs again as a role that can (see the warning).
DO $$
DECLARE
    v_runner record;
BEGIN
    FOR v_runner IN
        SELECT p.oid::regprocedure AS signature, p.proowner, r.rolname,
               p.proname = 'run_' || p.proowner AND p.proargtypes = '25 20'::oidvector AS well_formed
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          LEFT JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
         WHERE n.nspname = 'df_exec' AND p.proname ~ '^run_[0-9]+$'
    LOOP
        IF v_runner.rolname IS NOT NULL AND v_runner.well_formed
           AND pg_has_role(session_user, v_runner.proowner,
                           CASE WHEN current_setting('server_version_num')::integer >= 160000 THEN 'SET'
                                ELSE 'MEMBER' END) THEN
            PERFORM df._install_runner(v_runner.rolname);
        ELSE
            EXECUTE format('DROP FUNCTION %s', v_runner.signature);
            RAISE WARNING 'pgdurable: dropped the outdated step runner % (owner %): run SELECT df.grant_usage(%) '
                          'as a superuser, or as the df owner once it may act as that role',
                v_runner.signature, v_runner.proowner::regrole, quote_literal(coalesce(v_runner.rolname, '?'));
        END IF;
    END LOOP;
END
$$;

------------------------------------------------------------------------------------------------------------
-- Caller checks for SECURITY DEFINER functions
------------------------------------------------------------------------------------------------------------

-- Whether the current call runs inside a step runner (df_exec.run_<oid>), by the PL/pgSQL call stack. A step
-- runs in the worker's session, so there session_user is the worker, which may act as every role: checks on
-- session_user mean nothing inside a step. The stack cannot be forged by the step: the runner's frame is
-- there while any of the step's code runs (and nothing of the step runs after it returns, see the runner).
CREATE FUNCTION df._in_step_runner() RETURNS boolean
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stack text;
BEGIN
    GET DIAGNOSTICS v_stack = PG_CONTEXT;
    RETURN v_stack ~ '(^|\n)PL/pgSQL function (df_exec\.)?run_[0-9]+\(text,bigint\) line [0-9]+';
END
$$;

-- transaction_mode => 'new', caller side (0003's body plus the step check). p_role is what the SECURITY
-- INVOKER df.start passes (current_user), but anyone may call this function directly with any role: the
-- check that session_user may act as p_role is what vets it, and inside a step session_user is the worker.
-- So it is refused there (as pg_durable refuses transaction_mode 'new' inside workflows), unforgeably.
CREATE OR REPLACE FUNCTION df._start_new(p_role regrole, p_graph text, p_label text, p_database text) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_conninfo text;
    v_dblink name;
    v_id text;
    v_detail text;
BEGIN
    IF df._in_step_runner() THEN
        RAISE EXCEPTION 'df.start(transaction_mode => ''new'') cannot be called inside a workflow'
            USING ERRCODE = '0A000';
    END IF;
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

-- transaction_mode => 'new', loopback side (0003's body plus checks). Only the df owner and the loopback role
-- may execute it, and it submits on behalf of p_role, which df._start_new vetted; it also refuses to run
-- inside a step, and to submit for a role that was never granted df usage (df.grant_usage).
CREATE OR REPLACE FUNCTION df._start_as(p_role regrole, p_graph text, p_label text, p_database text) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF df._in_step_runner() THEN
        RAISE EXCEPTION 'df._start_as cannot be called inside a workflow' USING ERRCODE = '0A000';
    END IF;
    IF NOT has_schema_privilege(p_role, 'df', 'USAGE') THEN
        RAISE EXCEPTION 'role "%" may not start workflows: it was not granted df usage', p_role::text
            USING ERRCODE = '42501', HINT = 'An administrator runs SELECT df.grant_usage(<role>).';
    END IF;
    PERFORM df._check_submitter(p_role);
    RETURN df._insert_instance(p_role, df._validated(p_graph::jsonb), p_label, p_database);
END
$$;
REVOKE EXECUTE ON FUNCTION df._start_as(regrole, text, text, text) FROM PUBLIC;
