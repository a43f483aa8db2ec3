-- 0008_secrets: secrets for HTTP steps and Python function steps, referenced as {secret:NAME}.
--
-- A role stores its own secrets with df.set_secret and can never read them back; only the df owner (the
-- workers) reads them, when a step runs. They never enter a graph, a checkpoint or the history: steps keep
-- the {secret:NAME} placeholder, and the worker resolves it just before the request or call.

-- The role that called the current SECURITY DEFINER function: the session's current role outside it.
-- (current_user inside a SECURITY DEFINER function is its owner; the outer role is the one SET ROLE or
-- the login chose.)
CREATE FUNCTION df._invoker() RETURNS regrole
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.quote_ident(pg_catalog.current_setting('role', true))::regrole
       WHERE pg_catalog.current_setting('role', true) NOT IN ('', 'none')
      UNION ALL
      SELECT pg_catalog.quote_ident(session_user)::regrole
       LIMIT 1 $$;

CREATE TABLE df.secrets (
    owner      regrole NOT NULL DEFAULT df._me(),
    name       text NOT NULL CONSTRAINT secrets_name_chk CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.-]{0,99}$'),
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
ALTER TABLE df.secrets ENABLE ROW LEVEL SECURITY;  -- no policy: nobody but the owner sees a row

-- Store (or replace) a secret of the calling role.
CREATE FUNCTION df.set_secret(name text, value text) RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    -- the caller: inside SECURITY DEFINER, current_user is the definer, so take it from the invoker's session
    v_role constant regrole := df._invoker();
BEGIN
    IF df._in_step_runner() THEN  -- inside a step the session is the worker's, not the caller's
        RAISE EXCEPTION '% cannot be called inside a workflow', 'df.set_secret' USING ERRCODE = '0A000';
    END IF;
    PERFORM df._refuse_in_workflow('df.set_secret');
    IF set_secret.name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,99}$' THEN
        RAISE EXCEPTION 'df.set_secret: secret name ''%'' is not valid (letters, digits, _ . -, up to 100)',
            set_secret.name USING ERRCODE = '22023';
    END IF;
    INSERT INTO df.secrets AS s (owner, name, value) VALUES (v_role, set_secret.name, set_secret.value)
    ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value, updated_at = now();
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.unset_secret(name text) RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF df._in_step_runner() THEN  -- inside a step the session is the worker's, not the caller's
        RAISE EXCEPTION '% cannot be called inside a workflow', 'df.unset_secret' USING ERRCODE = '0A000';
    END IF;
    DELETE FROM df.secrets s WHERE s.owner = df._invoker() AND s.name = unset_secret.name;
    RETURN 'OK';
END
$$;

-- The names (never the values) of the calling role's secrets.
CREATE FUNCTION df.secret_names() RETURNS SETOF text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF df._in_step_runner() THEN  -- inside a step the session is the worker's, not the caller's
        RAISE EXCEPTION '% cannot be called inside a workflow', 'df.secret_names' USING ERRCODE = '0A000';
    END IF;
    RETURN QUERY SELECT s.name FROM df.secrets s WHERE s.owner = df._invoker() ORDER BY s.name;
END
$$;
