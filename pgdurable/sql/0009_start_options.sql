-- 0009_start_options: options of a start that the engine applies to the whole instance (pgdurable
-- extension): a default retry policy for its steps, and a deadline that cancels what still runs.

ALTER TABLE df.instances ADD COLUMN options jsonb NOT NULL DEFAULT '{}';

INSERT INTO df.settings (key, value, description) VALUES
    ('poison_claims', '5',
     'a step whose work item was claimed more often than this (its workers kept crashing) fails')
ON CONFLICT (key) DO NOTHING;

-- Record a new instance's options. SECURITY DEFINER (users cannot update df.instances), so it checks that
-- the session may act as the submitting role and that the instance has not started yet.
CREATE FUNCTION df._set_start_options(p_id text, p_role regrole, p_options jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF df._in_step_runner() THEN  -- inside a step the session is the worker's, not the caller's
        RAISE EXCEPTION '% cannot be called inside a workflow', 'df.start_with' USING ERRCODE = '0A000';
    END IF;
    IF NOT pg_has_role(session_user, p_role, 'MEMBER') THEN
        RAISE EXCEPTION 'df.start_with: options can only be set by the submitting role' USING ERRCODE = '42501';
    END IF;
    UPDATE df.instances i SET options = p_options
     WHERE i.id = p_id AND i.submitted_by = p_role AND i.checkpoint IS NULL;
END
$$;

CREATE OR REPLACE FUNCTION df.start_with(graph text, options jsonb DEFAULT '{}') RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    c_known constant text[] := ARRAY['label', 'database', 'transaction_mode', 'vars', 'idempotency_key', 'retry',
                                     'deadline_seconds'];
    c_policy constant jsonb := '{"max_attempts":3,"backoff_ms":1000,"max_backoff_ms":60000,"multiplier":2,"jitter_pct":20}';
    v_options constant jsonb := coalesce(options, '{}');
    v_vars jsonb;
    v_retry jsonb;
    v_deadline jsonb;
    v_key text;
    v_error text;
    v_id text;
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
     WHERE k NOT IN ('vars', 'retry', 'deadline_seconds') AND jsonb_typeof(v) NOT IN ('string', 'null')
     ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION 'df.start_with: option ''%'' must be a string or null', v_key USING ERRCODE = '22023';
    END IF;
    v_vars := coalesce(nullif(v_options -> 'vars', 'null'), '{}');
    IF jsonb_typeof(v_vars) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(v_vars) AS e(k, v) WHERE jsonb_typeof(v) <> 'string') THEN
        RAISE EXCEPTION 'df.start_with: option ''vars'' must be an object of strings' USING ERRCODE = '22023';
    END IF;
    -- a default retry policy for the steps that have none: the given keys over the defaults
    IF coalesce(jsonb_typeof(v_options -> 'retry'), 'null') <> 'null' THEN
        IF jsonb_typeof(v_options -> 'retry') <> 'object' THEN
            RAISE EXCEPTION 'df.start_with: option ''retry'' must be a JSON object' USING ERRCODE = '22023';
        END IF;
        v_retry := c_policy || (v_options -> 'retry');
        v_error := df._retry_error(v_retry);
        IF v_error IS NOT NULL THEN
            RAISE EXCEPTION 'df.start_with: %', v_error USING ERRCODE = '22023';
        END IF;
    END IF;
    v_deadline := nullif(v_options -> 'deadline_seconds', 'null');
    IF v_deadline IS NOT NULL
       AND (NOT df._is_json_integer(v_deadline) OR v_deadline::text::numeric NOT BETWEEN 1 AND 2147483647) THEN
        RAISE EXCEPTION 'df.start_with: option ''deadline_seconds'' must be an integer from 1 to 2147483647'
            USING ERRCODE = '22023';
    END IF;
    v_id := df._start_keyed(graph, v_options ->> 'label', v_options ->> 'database',
                            coalesce(v_options ->> 'transaction_mode', 'caller'), v_vars,
                            v_options ->> 'idempotency_key');
    IF v_retry IS NOT NULL OR v_deadline IS NOT NULL THEN
        PERFORM df._set_start_options(v_id, df._me(),
                                      jsonb_strip_nulls(jsonb_build_object('retry', v_retry,
                                                                           'deadline_seconds', v_deadline)));
    END IF;
    RETURN v_id;
END
$$;
