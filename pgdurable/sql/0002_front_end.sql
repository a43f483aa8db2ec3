-- 0002_front_end: the SQL DSL. Graph builders, auto-wrapping, the graph walker (validation, canonical
-- rendering, flattening), cron validation and the operators.
--
-- The JSON is built by string concatenation (`to_json(text)::text` for strings) so that it is byte-identical
-- to the Python DSL's `to_json()`: keys node_type, left_node, right_node, condition_node, extra_nodes, query,
-- result_name, absent ones omitted, compact separators (docs/graph-format.md).

CREATE FUNCTION df._valid_node_types() RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
                   'HTTP_MULTIPART', 'SIGNAL', 'CALL'] $$;

CREATE FUNCTION df._is_identifier(p_name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT p_name ~ '^[A-Za-z_][A-Za-z0-9_]*$' $$;

-- One envelope, keys in canonical order. Children are canonical node texts.
CREATE FUNCTION df._node(p_type text, p_left text, p_right text, p_cond text, p_extras text[],
                         p_query text, p_name text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT '{"node_type":' || pg_catalog.to_json(p_type)::text
        || coalesce(',"left_node":' || p_left, '')
        || coalesce(',"right_node":' || p_right, '')
        || coalesce(',"condition_node":' || p_cond, '')
        || CASE WHEN pg_catalog.cardinality(p_extras) > 0
                THEN ',"extra_nodes":[' || pg_catalog.array_to_string(p_extras, ',') || ']' ELSE '' END
        || coalesce(',"query":' || pg_catalog.to_json(p_query)::text, '')
        || coalesce(',"result_name":' || pg_catalog.to_json(p_name)::text, '')
        || '}'
$$;

CREATE FUNCTION df._sql_node(p_query text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT '{"node_type":"SQL","query":' || pg_catalog.to_json(p_query)::text || '}' $$;

-- jsonb rendered compactly in jsonb's own key order (what `jsonb::text` prints, minus the spaces).
CREATE FUNCTION df._jsonb_compact(j jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_out text;
BEGIN
    CASE pg_catalog.jsonb_typeof(j)
    WHEN 'object' THEN
        SELECT '{' || coalesce(string_agg(to_json(e.key)::text || ':' || df._jsonb_compact(e.value), ','
                                          ORDER BY e.ord), '') || '}'
          INTO v_out
          FROM jsonb_each(j) WITH ORDINALITY AS e(key, value, ord);
        RETURN v_out;
    WHEN 'array' THEN
        SELECT '[' || coalesce(string_agg(df._jsonb_compact(e.value), ',' ORDER BY e.ord), '') || ']'
          INTO v_out
          FROM jsonb_array_elements(j) WITH ORDINALITY AS e(value, ord);
        RETURN v_out;
    ELSE
        RETURN j::text;
    END CASE;
END
$$;

-- Parse text as jsonb, or NULL when it is not JSON (no error, no subtransaction on PostgreSQL 16+).
DO $do$
BEGIN
    IF current_setting('server_version_num')::integer >= 160000 THEN
        EXECUTE $f$
        CREATE FUNCTION df._try_jsonb(p_text text) RETURNS jsonb
            LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
        AS $$
        BEGIN
            -- plpgsql, not an inlinable SQL function: constant folding would evaluate the cast first
            IF pg_catalog.pg_input_is_valid(p_text, 'jsonb') THEN
                RETURN p_text::jsonb;
            END IF;
            RETURN NULL;
        END
        $$
        $f$;
    ELSE
        EXECUTE $f$
        CREATE FUNCTION df._try_jsonb(p_text text) RETURNS jsonb
            LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
        AS $$ BEGIN RETURN p_text::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$
        $f$;
    END IF;
END
$do$;

------------------------------------------------------------------------------------------------------------
-- Cron (docs/graph-format.md "Cron"; the vectors are tests/data/cron_vectors.json).
------------------------------------------------------------------------------------------------------------

-- The value of one cron token, or an error text in p_error.
CREATE FUNCTION df._cron_value(p_token text, p_field integer, OUT p_value integer, OUT p_error text)
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_names constant text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    c_low constant integer[] := ARRAY[0, 0, 1, 1, 0];
    c_high constant integer[] := ARRAY[59, 23, 31, 12, 7];
    c_months constant text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT',
                                      'NOV', 'DEC'];
    c_days constant text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    v_number numeric;
BEGIN
    IF p_token ~ '^[0-9]+$' THEN
        v_number := p_token::numeric;
        IF v_number < c_low[p_field] OR v_number > c_high[p_field] THEN
            p_error := format('%s value ''%s'' is out of range %s-%s',
                              c_names[p_field], p_token, c_low[p_field], c_high[p_field]);
        ELSE
            p_value := v_number::integer;
        END IF;
    ELSIF p_field = 4 AND upper(p_token) = ANY (c_months) THEN
        p_value := array_position(c_months, upper(p_token));
    ELSIF p_field = 5 AND upper(p_token) = ANY (c_days) THEN
        p_value := array_position(c_days, upper(p_token)) - 1;
    ELSE
        p_error := format('%s item ''%s'' is not a number, name, range or step', c_names[p_field], p_token);
    END IF;
END
$$;

CREATE FUNCTION df._cron_item_error(p_item text, p_field integer) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_names constant text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    v_match text[];
    v_low record;
    v_high record;
BEGIN
    -- groups: star, start, end, step
    v_match := regexp_match(p_item, '^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/(.*))?$');
    IF v_match IS NULL THEN
        RETURN format('%s item ''%s'' is not a number, name, range or step', c_names[p_field], p_item);
    END IF;
    IF v_match[4] IS NOT NULL AND NOT (v_match[4] ~ '^[0-9]+$' AND v_match[4]::numeric >= 1) THEN
        RETURN format('%s step ''%s'' must be a positive integer', c_names[p_field], v_match[4]);
    END IF;
    IF v_match[1] IS NOT NULL THEN
        RETURN NULL;
    END IF;
    v_low := df._cron_value(v_match[2], p_field);
    IF v_low.p_error IS NOT NULL THEN
        RETURN v_low.p_error;
    END IF;
    IF v_match[3] IS NOT NULL THEN
        v_high := df._cron_value(v_match[3], p_field);
        IF v_high.p_error IS NOT NULL THEN
            RETURN v_high.p_error;
        END IF;
        IF v_low.p_value > v_high.p_value THEN
            RETURN format('%s range ''%s-%s'' is reversed', c_names[p_field], v_match[2], v_match[3]);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- The detail of why p_expr is not a valid 5-field cron expression, or NULL when it is valid.
-- Fields are separated by ASCII whitespace (space, \t, \n, \r, \f, \v).
CREATE FUNCTION df._cron_error(p_expr text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_ws constant text := '[ \t\n\r\f\v]+';
    v_trimmed text;
    v_fields text[];
    v_item text;
    v_error text;
BEGIN
    v_trimmed := regexp_replace(regexp_replace(p_expr, '^' || c_ws, ''), c_ws || '$', '');
    v_fields := CASE WHEN v_trimmed = '' THEN '{}'::text[] ELSE regexp_split_to_array(v_trimmed, c_ws) END;
    IF cardinality(v_fields) <> 5 THEN
        RETURN format('expected 5 fields (minute hour day-of-month month day-of-week), got %s',
                      cardinality(v_fields));
    END IF;
    FOR i IN 1..5 LOOP
        FOREACH v_item IN ARRAY string_to_array(v_fields[i], ',') LOOP
            v_error := df._cron_item_error(v_item, i);
            IF v_error IS NOT NULL THEN
                RETURN v_error;
            END IF;
        END LOOP;
    END LOOP;
    RETURN NULL;
END
$$;

------------------------------------------------------------------------------------------------------------
-- Node configs (the `query` of config-bearing nodes) and their validation.
------------------------------------------------------------------------------------------------------------

CREATE FUNCTION df._http_method_error(p_kind text, p_method text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_kind = 'HTTP' AND NOT coalesce(p_method = ANY (ARRAY['GET', 'POST', 'PUT', 'DELETE', 'PATCH']), false)
            THEN format('unsupported method ''%s'' (expected GET, POST, PUT, DELETE or PATCH)', p_method)
        WHEN p_kind = 'HTTP_MULTIPART' AND NOT coalesce(p_method = ANY (ARRAY['POST', 'PUT', 'PATCH']), false)
            THEN format('unsupported method ''%s'' (expected POST, PUT or PATCH)', p_method)
    END
$$;

CREATE FUNCTION df._http_url_error(p_url text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN strpos(p_url, '{') = 0 AND p_url !~* '^https?://'
                THEN 'URL scheme must be http or https: ' || p_url END
$$;

CREATE FUNCTION df._http_headers_error(p_headers jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_headers IS NULL OR jsonb_typeof(p_headers) = 'null' THEN NULL
        WHEN jsonb_typeof(p_headers) <> 'object' THEN 'headers must be a JSON object'
        ELSE (SELECT format('header ''%s'' must have a string value', e.key)
                FROM jsonb_each(p_headers) WITH ORDINALITY AS e(key, value, ord)
               WHERE jsonb_typeof(e.value) <> 'string'
               ORDER BY e.ord LIMIT 1)
    END
$$;

CREATE FUNCTION df._is_json_integer(j jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT jsonb_typeof(j) = 'number' AND j::text ~ '^-?[0-9]+$' $$;

-- The checks that df.http / df.http_multipart make after their jsonb arguments: URL scheme, method
-- (compared and reported upper-cased), timeout. Messages without the builder prefix.
CREATE FUNCTION df._http_target_error(p_kind text, p_url text, p_method text, p_timeout numeric) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(df._http_url_error(p_url),
                    df._http_method_error(p_kind, upper(p_method)),
                    CASE WHEN p_timeout IS NULL OR p_timeout <= 0
                         THEN 'timeout_seconds must be > 0, got ' || coalesce(p_timeout::text, 'NULL') END)
$$;

-- Why the `query` of a config-bearing node is invalid: the full message (without the path), or NULL.
-- Same checks, order and texts as the Python decoder (pgdurable/dsl/codec.py).
-- pgdurable extension: the checks of a CALL node's function name and arguments (as Call in Python).
CREATE FUNCTION df._call_error(p_function text, p_args jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_function !~ '^[A-Za-z_][A-Za-z0-9_.]{0,199}$'
            THEN format('df.call: function name ''%s'' is not valid (letters, digits, _ and ., up to 200 characters)',
                        p_function)
        WHEN jsonb_typeof(p_args) IS DISTINCT FROM 'object' THEN 'df.call: args must be a JSON object'
    END
$$;

CREATE FUNCTION df._config_error(p_type text, p_query text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_builder constant text := CASE p_type WHEN 'HTTP' THEN 'df.http' ELSE 'df.http_multipart' END;
    v_keys text[];
    v_key text;
    v_error text;
    c jsonb;
BEGIN
    IF p_type = 'SQL' THEN
        RETURN NULL;
    ELSIF p_type = 'SLEEP' THEN
        RETURN CASE WHEN p_query !~ '^[0-9]+$'
                    THEN 'invalid SLEEP config: expected a whole number of seconds, such as "60"' END;
    END IF;
    v_keys := CASE p_type
        WHEN 'IF' THEN ARRAY['condition_type', 'result_name']
        WHEN 'BREAK' THEN ARRAY['break_value']
        WHEN 'WAIT_SCHEDULE' THEN ARRAY['cron_expr']
        WHEN 'SIGNAL' THEN ARRAY['signal_name', 'timeout_seconds']
        WHEN 'HTTP' THEN ARRAY['url', 'method', 'body', 'headers', 'timeout_seconds']
        WHEN 'HTTP_MULTIPART' THEN ARRAY['url', 'method', 'parts', 'headers', 'timeout_seconds']
        WHEN 'CALL' THEN ARRAY['function', 'args']
    END;
    c := df._try_jsonb(p_query);
    IF c IS NULL THEN
        RETURN format('invalid %s config: not valid JSON', p_type);
    ELSIF jsonb_typeof(c) <> 'object' THEN
        RETURN format('invalid %s config: expected a JSON object', p_type);
    ELSIF c ? 'condition_node' OR c ? 'extra_nodes' THEN
        RETURN 'legacy condition_node/extra_nodes inside query is not supported';
    END IF;
    SELECT min(k COLLATE "C") INTO v_key FROM unnest(v_keys) AS k WHERE NOT c ? k;
    IF v_key IS NOT NULL THEN
        RETURN format('invalid %s config: missing key ''%s''', p_type, v_key);
    END IF;
    SELECT min(k COLLATE "C") INTO v_key FROM jsonb_object_keys(c) AS k WHERE k <> ALL (v_keys);
    IF v_key IS NOT NULL THEN
        RETURN format('invalid %s config: unknown key ''%s''', p_type, v_key);
    END IF;
    CASE p_type
    WHEN 'IF' THEN
        IF c -> 'condition_type' IS DISTINCT FROM '"result_has_rows"'
           OR jsonb_typeof(c -> 'result_name') <> 'string' THEN
            RETURN 'invalid IF config: expected {"condition_type":"result_has_rows","result_name":"<name>"}';
        END IF;
    WHEN 'BREAK' THEN
        IF jsonb_typeof(c -> 'break_value') NOT IN ('string', 'null') THEN
            RETURN 'invalid BREAK config: break_value must be a string or null';
        END IF;
    WHEN 'WAIT_SCHEDULE' THEN
        IF jsonb_typeof(c -> 'cron_expr') <> 'string' THEN
            RETURN 'invalid WAIT_SCHEDULE config: cron_expr must be a string';
        END IF;
        v_error := df._cron_error(c ->> 'cron_expr');
        IF v_error IS NOT NULL THEN
            RETURN format('df.wait_for_schedule: invalid cron expression ''%s'': %s', c ->> 'cron_expr', v_error);
        END IF;
    WHEN 'SIGNAL' THEN
        IF jsonb_typeof(c -> 'signal_name') <> 'string' THEN
            RETURN 'invalid SIGNAL config: signal_name must be a string';
        ELSIF jsonb_typeof(c -> 'timeout_seconds') <> 'null' AND NOT df._is_json_integer(c -> 'timeout_seconds') THEN
            RETURN 'invalid SIGNAL config: timeout_seconds must be an integer';
        ELSIF c ->> 'signal_name' = '' THEN
            RETURN 'df.wait_for_signal: signal name must not be empty';
        ELSIF (c ->> 'timeout_seconds')::numeric <= 0 THEN
            RETURN 'df.wait_for_signal: timeout_seconds must be > 0, got ' || (c ->> 'timeout_seconds');
        END IF;
    WHEN 'CALL' THEN
        IF jsonb_typeof(c -> 'function') <> 'string' THEN
            RETURN 'invalid CALL config: function must be a string';
        ELSIF jsonb_typeof(c -> 'args') <> 'object' THEN
            RETURN 'invalid CALL config: args must be a JSON object';
        END IF;
        RETURN df._call_error(c ->> 'function', c -> 'args');
    WHEN 'HTTP', 'HTTP_MULTIPART' THEN
        v_error := df._http_headers_error(c -> 'headers');
        IF v_error LIKE 'headers %' THEN
            RETURN 'df.http: ' || v_error;
        ELSIF v_error IS NOT NULL THEN
            RETURN v_error;
        END IF;
        SELECT format('invalid %s config: %s must be a string', p_type, u.k) INTO v_error
          FROM unnest(ARRAY['url', 'method']) WITH ORDINALITY AS u(k, o)
         WHERE jsonb_typeof(c -> u.k) <> 'string' ORDER BY u.o LIMIT 1;
        IF v_error IS NOT NULL THEN
            RETURN v_error;
        ELSIF p_type = 'HTTP' AND jsonb_typeof(c -> 'body') NOT IN ('string', 'null') THEN
            RETURN 'invalid HTTP config: body must be a string';
        ELSIF NOT df._is_json_integer(c -> 'timeout_seconds') THEN
            RETURN format('invalid %s config: timeout_seconds must be an integer', p_type);
        ELSIF p_type = 'HTTP_MULTIPART'
              AND (jsonb_typeof(c -> 'parts') <> 'array' OR jsonb_array_length(c -> 'parts') = 0) THEN
            RETURN 'df.http_multipart: parts must be a non-empty JSON array';
        END IF;
        v_error := df._http_target_error(p_type, c ->> 'url', c ->> 'method',
                                         (c ->> 'timeout_seconds')::numeric);
        IF v_error IS NOT NULL THEN
            RETURN c_builder || ': ' || v_error;
        END IF;
    END CASE;
    RETURN NULL;
END
$$;

------------------------------------------------------------------------------------------------------------
-- The graph walker.
--
-- df._walk turns a parsed envelope into flat arrays indexed by pre-order position (root = 1; children in
-- the order left, right, condition_node, extra_nodes). It is iterative, so depth is bounded by the
-- validation limit, not by the C stack.
--   p_validate = false: the builders' auto-wrap parse (reference §3.3): children must be objects with a
--     string node_type, query/result_name strings; unknown keys are dropped, unknown nested types kept.
--     Errors: 'Invalid Durofut JSON: failed to deserialize workflow step: <path>: <problem>'.
--   p_validate = true: the full validation of docs/graph-format.md. Errors are raised with SQLSTATE
--     'DFG01' and the message '<path>: <problem>'; df.start and df.explain add their prefixes.
------------------------------------------------------------------------------------------------------------

-- pgdurable extension keys (docs/graph-format.md): `retry` and `timeout_seconds`, after result_name, on
-- SQL, HTTP, HTTP_MULTIPART and CALL nodes. Both front ends check them with the same messages.
CREATE FUNCTION df._retry_error(r jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_keys constant text[] := ARRAY['max_attempts', 'backoff_ms', 'max_backoff_ms', 'multiplier', 'jitter_pct'];
    c_low constant bigint[] := ARRAY[1, 0, 0, 1, 0];
    c_high constant bigint[] := ARRAY[100, 86400000, 86400000, 10, 100];
    v_key text;
    v_code jsonb;
BEGIN
    IF jsonb_typeof(r) IS DISTINCT FROM 'object' THEN
        RETURN 'invalid retry policy: expected a JSON object';
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(r) AS k
     WHERE k <> ALL (c_keys || 'retry_on'::text) ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        RETURN format('invalid retry policy: unknown key ''%s''', v_key);
    END IF;
    SELECT k INTO v_key FROM unnest(c_keys) AS k WHERE NOT r ? k ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        RETURN format('invalid retry policy: missing key ''%s''', v_key);
    END IF;
    FOR i IN 1 .. cardinality(c_keys) LOOP
        IF NOT df._is_json_integer(r -> c_keys[i]) OR (r ->> c_keys[i])::numeric NOT BETWEEN c_low[i] AND c_high[i] THEN
            RETURN format('invalid retry policy: %s must be an integer from %s to %s', c_keys[i], c_low[i], c_high[i]);
        END IF;
    END LOOP;
    IF (r ->> 'max_backoff_ms')::bigint < (r ->> 'backoff_ms')::bigint THEN
        RETURN 'invalid retry policy: max_backoff_ms must be at least backoff_ms';
    END IF;
    IF r ? 'retry_on' THEN
        IF jsonb_typeof(r -> 'retry_on') IS DISTINCT FROM 'array' OR jsonb_array_length(r -> 'retry_on') = 0 THEN
            RETURN 'invalid retry policy: retry_on must be a non-empty list of SQLSTATE codes or classes';
        END IF;
        FOR v_code IN SELECT e FROM jsonb_array_elements(r -> 'retry_on') AS e LOOP
            IF jsonb_typeof(v_code) <> 'string' OR (v_code #>> '{}') !~ '^[0-9A-Z]{2}([0-9A-Z]{3})?$' THEN
                RETURN format('invalid retry policy: retry_on entry %s is not a SQLSTATE code (5 characters) or class (2)',
                              CASE WHEN jsonb_typeof(v_code) = 'string'
                                   THEN '''' || (v_code #>> '{}') || '''' ELSE v_code::text END);
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION df._extension_error(j jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN j ? 'retry' AND (j ->> 'node_type') NOT IN ('SQL', 'HTTP', 'HTTP_MULTIPART', 'CALL')
            THEN 'retry is only allowed on SQL, HTTP, HTTP_MULTIPART and CALL nodes'
        WHEN j ? 'timeout_seconds' AND (j ->> 'node_type') NOT IN ('SQL', 'HTTP', 'HTTP_MULTIPART', 'CALL')
            THEN 'timeout_seconds is only allowed on SQL, HTTP, HTTP_MULTIPART and CALL nodes'
        WHEN j ? 'retry' THEN df._retry_error(j -> 'retry')
        WHEN j ? 'timeout_seconds' AND (NOT df._is_json_integer(j -> 'timeout_seconds')
                                        OR (j ->> 'timeout_seconds')::numeric NOT BETWEEN 1 AND 2147483647)
            THEN 'timeout_seconds must be an integer from 1 to 2147483647'
    END
$$;

-- The extension keys of a node in canonical form (',"retry":{...},"timeout_seconds":n'), or ''.
CREATE FUNCTION df._extension_text(j jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN j ? 'retry' AND jsonb_typeof(j -> 'retry') = 'object' THEN
               ',"retry":{"max_attempts":' || (j #>> '{retry,max_attempts}')
               || ',"backoff_ms":' || (j #>> '{retry,backoff_ms}')
               || ',"max_backoff_ms":' || (j #>> '{retry,max_backoff_ms}')
               || ',"multiplier":' || (j #>> '{retry,multiplier}')
               || ',"jitter_pct":' || (j #>> '{retry,jitter_pct}')
               || coalesce(',"retry_on":' || df._jsonb_compact(j #> '{retry,retry_on}'), '') || '}'
           ELSE '' END
        || coalesce(',"timeout_seconds":' || (j ->> 'timeout_seconds'), '')
$$;

CREATE TYPE df._graph AS (
    types   text[],
    queries text[],
    names   text[],
    lefts   integer[],
    rights  integer[],
    conds   integer[],
    extras  text[],     -- comma-separated child positions, in order
    exts    text[]      -- the canonical extension keys (df._extension_text), '' when none
);

-- The problem of one node under full validation, or NULL (children are checked when visited). Keys count
-- as present even when their value is JSON null, as in the Python decoder.
CREATE FUNCTION df._node_error(j jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_keys constant text[] := ARRAY['node_type', 'left_node', 'right_node', 'condition_node', 'extra_nodes',
                                    'query', 'result_name', 'retry', 'timeout_seconds'];
    v_type text;
    v_key text;
BEGIN
    IF jsonb_typeof(j) IS DISTINCT FROM 'object' THEN
        RETURN 'expected a JSON object';
    ELSIF jsonb_typeof(j -> 'node_type') IS DISTINCT FROM 'string' THEN
        RETURN 'node_type must be a string';
    END IF;
    v_type := j ->> 'node_type';
    IF v_type <> ALL (df._valid_node_types()) THEN
        RETURN format('Unknown node_type ''%s''. Valid types: %s', v_type,
                      array_to_string(df._valid_node_types(), ', '));
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(j) AS k WHERE k <> ALL (c_keys) LIMIT 1;
    IF v_key IS NOT NULL THEN
        RETURN format('unknown key ''%s''', v_key);
    ELSIF j ? 'condition_node' AND v_type NOT IN ('IF', 'LOOP') THEN
        RETURN 'condition_node is only allowed on IF and LOOP nodes';
    ELSIF j ? 'extra_nodes' AND v_type <> 'JOIN' THEN
        RETURN 'extra_nodes is only allowed on JOIN nodes';
    ELSIF (j ? 'retry' OR j ? 'timeout_seconds') AND v_type NOT IN ('SQL', 'HTTP', 'HTTP_MULTIPART', 'CALL') THEN
        RETURN df._extension_error(j);
    END IF;
    IF v_type IN ('SQL', 'BREAK', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'CALL') THEN
        IF j ? 'left_node' THEN
            RETURN v_type || ' does not take left_node';
        ELSIF j ? 'right_node' THEN
            RETURN v_type || ' does not take right_node';
        ELSIF jsonb_typeof(j -> 'query') IS DISTINCT FROM 'string' THEN
            RETURN v_type || ' requires a query string';
        END IF;
    ELSIF v_type IN ('THEN', 'JOIN', 'RACE', 'IF') AND NOT (j ? 'left_node' AND j ? 'right_node') THEN
        RETURN v_type || ' requires left_node and right_node';
    ELSIF v_type = 'LOOP' AND NOT j ? 'left_node' THEN
        RETURN 'LOOP requires left_node';
    ELSIF v_type = 'LOOP' AND j ? 'right_node' THEN
        RETURN 'LOOP does not take right_node';
    END IF;
    IF v_type IN ('THEN', 'JOIN', 'RACE', 'LOOP') AND j ? 'query' THEN
        RETURN v_type || ' does not take a query';
    ELSIF v_type = 'IF' AND (j ? 'condition_node') = (j ? 'query') THEN
        RETURN 'IF requires exactly one of condition_node or an if_rows query';
    END IF;
    IF coalesce(jsonb_typeof(j -> 'result_name'), 'null') <> 'null'
       AND (jsonb_typeof(j -> 'result_name') <> 'string' OR NOT df._is_identifier(j ->> 'result_name')) THEN
        RETURN format('result name ''%s'' is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)',
                      j ->> 'result_name');
    ELSIF v_type = 'JOIN' AND j ? 'extra_nodes' AND jsonb_typeof(j -> 'extra_nodes') <> 'array' THEN
        RETURN 'extra_nodes must be an array';
    ELSIF v_type = 'IF' AND j ? 'query' AND jsonb_typeof(j -> 'query') <> 'string' THEN
        RETURN 'IF requires a query string';
    ELSIF v_type IN ('THEN', 'JOIN', 'RACE', 'LOOP') OR (v_type = 'IF' AND NOT j ? 'query') THEN
        RETURN NULL;
    END IF;
    RETURN coalesce(df._config_error(v_type, j ->> 'query'), df._extension_error(j));
END
$$;

-- The auto-wrap parse's shape problem of one node (NULL when it deserializes).
CREATE FUNCTION df._shape_error(j jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(j) IS DISTINCT FROM 'object' THEN 'expected a JSON object'
        WHEN jsonb_typeof(j -> 'node_type') IS DISTINCT FROM 'string' THEN 'node_type must be a string'
        WHEN coalesce(jsonb_typeof(j -> 'extra_nodes'), 'null') NOT IN ('null', 'array')
            THEN 'extra_nodes must be an array'
        WHEN coalesce(jsonb_typeof(j -> 'query'), 'null') NOT IN ('null', 'string')
            THEN 'query must be a string'
        WHEN coalesce(jsonb_typeof(j -> 'result_name'), 'null') NOT IN ('null', 'string')
            THEN 'result_name must be a string'
    END
$$;

CREATE FUNCTION df._walk(g jsonb, p_validate boolean) RETURNS df._graph
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    c_max_depth constant integer := 256;
    c_max_nodes constant integer := 10000;
    -- the stack of nodes still to visit
    st_node jsonb[] := ARRAY[g];
    st_path text[] := ARRAY['root'];
    st_depth integer[] := ARRAY[1];
    st_parent integer[] := ARRAY[0];
    st_role text[] := ARRAY['root'];
    sp integer := 1;
    n integer := 0;
    j jsonb;
    v_path text;
    v_depth integer;
    v_parent integer;
    v_error text;
    v_child jsonb;
    v_count integer;
    r df._graph;
BEGIN
    r := ROW('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
    WHILE sp > 0 LOOP
        j := st_node[sp];
        v_path := st_path[sp];
        v_depth := st_depth[sp];
        v_parent := st_parent[sp];
        n := n + 1;
        CASE st_role[sp]
            WHEN 'left' THEN r.lefts[v_parent] := n;
            WHEN 'right' THEN r.rights[v_parent] := n;
            WHEN 'cond' THEN r.conds[v_parent] := n;
            WHEN 'extra' THEN r.extras[v_parent] := coalesce(r.extras[v_parent] || ',', '') || n;
            ELSE NULL;
        END CASE;
        sp := sp - 1;
        IF p_validate THEN
            IF v_depth > c_max_depth THEN
                RAISE EXCEPTION USING ERRCODE = 'DFG01',
                    MESSAGE = format('%s: Graph exceeds maximum nesting depth of %s', v_path, c_max_depth);
            END IF;
            IF n > c_max_nodes THEN
                RAISE EXCEPTION USING ERRCODE = 'DFG01',
                    MESSAGE = format('root: Graph exceeds maximum of %s nodes', c_max_nodes);
            END IF;
            v_error := df._node_error(j);
            IF v_error IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'DFG01', MESSAGE = v_path || ': ' || v_error;
            END IF;
        ELSE
            v_error := df._shape_error(j);
            IF v_error IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = 'Invalid Durofut JSON: failed to deserialize workflow step: '
                              || v_path || ': ' || v_error;
            END IF;
        END IF;
        r.types[n] := j ->> 'node_type';
        r.queries[n] := j ->> 'query';
        r.names[n] := j ->> 'result_name';
        r.exts[n] := df._extension_text(j);
        -- push the children in reverse visiting order
        IF jsonb_typeof(j -> 'extra_nodes') = 'array' THEN
            v_count := jsonb_array_length(j -> 'extra_nodes');
            FOR k IN REVERSE v_count - 1 .. 0 LOOP
                sp := sp + 1;
                st_node[sp] := j -> 'extra_nodes' -> k;
                st_path[sp] := v_path || '.extra_nodes[' || k || ']';
                st_depth[sp] := v_depth + 1;
                st_parent[sp] := n;
                st_role[sp] := 'extra';
            END LOOP;
        END IF;
        FOREACH v_error IN ARRAY ARRAY['condition_node', 'right_node', 'left_node'] LOOP
            v_child := j -> v_error;
            CONTINUE WHEN v_child IS NULL OR (NOT p_validate AND jsonb_typeof(v_child) = 'null');
            sp := sp + 1;
            st_node[sp] := v_child;
            st_path[sp] := v_path || '.' || CASE v_error WHEN 'condition_node' THEN 'condition_node'
                                                         WHEN 'right_node' THEN 'right' ELSE 'left' END;
            st_depth[sp] := v_depth + 1;
            st_parent[sp] := n;
            st_role[sp] := CASE v_error WHEN 'condition_node' THEN 'cond'
                                        WHEN 'right_node' THEN 'right' ELSE 'left' END;
        END LOOP;
    END LOOP;
    RETURN r;
END
$$;

-- Canonical JSON text of a walked graph: built bottom-up (children have larger positions).
CREATE FUNCTION df._render(g df._graph) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_texts text[];
    v_extras text[];
    n constant integer := cardinality(g.types);
BEGIN
    v_texts := array_fill(NULL::text, ARRAY[n]);
    FOR i IN REVERSE n .. 1 LOOP
        v_extras := NULL;
        IF g.extras[i] IS NOT NULL THEN
            SELECT array_agg(v_texts[e::integer] ORDER BY o) INTO v_extras
              FROM unnest(string_to_array(g.extras[i], ',')) WITH ORDINALITY AS u(e, o);
        END IF;
        v_texts[i] := df._node(g.types[i], v_texts[g.lefts[i]], v_texts[g.rights[i]], v_texts[g.conds[i]],
                               v_extras, g.queries[i], g.names[i]);
        IF coalesce(g.exts[i], '') <> '' THEN  -- extension keys come after result_name
            v_texts[i] := left(v_texts[i], -1) || g.exts[i] || '}';
        END IF;
        -- children are embedded now; release their text
        IF g.lefts[i] IS NOT NULL THEN v_texts[g.lefts[i]] := NULL; END IF;
        IF g.rights[i] IS NOT NULL THEN v_texts[g.rights[i]] := NULL; END IF;
        IF g.conds[i] IS NOT NULL THEN v_texts[g.conds[i]] := NULL; END IF;
    END LOOP;
    RETURN v_texts[1];
END
$$;

-- A graph envelope parsed from text, or NULL when the text is not one (plain SQL, other JSON): the text
-- must be a JSON object whose node_type is a string.
CREATE FUNCTION df._parse_envelope(p_text text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    j jsonb;
BEGIN
    IF p_text !~ '^[ \t\n\r]*\{' THEN
        RETURN NULL;
    END IF;
    j := df._try_jsonb(p_text);
    IF jsonb_typeof(j -> 'node_type') IS DISTINCT FROM 'string' THEN
        RETURN NULL;
    END IF;
    RETURN j;
END
$$;

-- Raise when a status-returning helper (df.setvar, ...) ran earlier in this statement and its plain-text
-- result is now being used as a workflow step (reference §3.3 step 1).
CREATE FUNCTION df._mark_helper(p_helper text) RETURNS void
    LANGUAGE sql VOLATILE
AS $$ SELECT set_config('pgdurable.helper_marker', p_helper || '|' || statement_timestamp()::text, false) $$;

CREATE FUNCTION df._check_helper_marker() RETURNS void
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_marker constant text := current_setting('pgdurable.helper_marker', true);
BEGIN
    IF v_marker IS NOT NULL AND v_marker <> ''
       AND split_part(v_marker, '|', 2) = statement_timestamp()::text THEN
        RAISE EXCEPTION '% cannot be used as a workflow step: it returns a status text, not a graph',
            split_part(v_marker, '|', 1);
    END IF;
END
$$;

-- Auto-wrap (reference §3.3): a graph envelope with a known type is used as is (re-rendered canonically),
-- anything else becomes a SQL node holding the whole text.
CREATE FUNCTION df._ensure(p_text text) RETURNS text
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    j jsonb;
    v_graph df._graph;
BEGIN
    IF p_text IS NULL THEN
        RETURN NULL;
    END IF;
    IF left(p_text, 1) <> '{' THEN
        PERFORM df._check_helper_marker();
    END IF;
    j := df._parse_envelope(p_text);
    IF j IS NULL THEN
        RETURN df._sql_node(p_text);
    END IF;
    v_graph := df._walk(j, false);
    IF v_graph.types[1] <> ALL (df._valid_node_types()) THEN
        RETURN df._sql_node(p_text);
    END IF;
    RETURN df._render(v_graph);
END
$$;

------------------------------------------------------------------------------------------------------------
-- Builders (reference §1.1): exact names, argument names, defaults and STRICT-ness.
------------------------------------------------------------------------------------------------------------

CREATE FUNCTION df.sql(query text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df._sql_node(query) $$;

CREATE FUNCTION df.seq(a text, b text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df._node('THEN', df._ensure(a), df._ensure(b), NULL, NULL, NULL, NULL) $$;

CREATE FUNCTION df."as"(fut text, name text) RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
BEGIN
    IF NOT df._is_identifier(name) THEN
        RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)',
            name USING ERRCODE = '22023';
    END IF;
    -- re-rendered, so that result_name lands before any extension keys
    RETURN df._render(df._walk(jsonb_set(df._ensure(fut)::jsonb, '{result_name}', to_jsonb(name)), false));
END
$$;

CREATE FUNCTION df."join"(a text, b text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df._node('JOIN', df._ensure(a), df._ensure(b), NULL, NULL, NULL, NULL) $$;

CREATE FUNCTION df.join3(a text, b text, c text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df._node('JOIN', df._ensure(a), df._ensure(b), NULL, ARRAY[df._ensure(c)], NULL, NULL) $$;

-- pgdurable extension: an N-way JOIN (2 or more branches); the third and later go to extra_nodes.
CREATE FUNCTION df.join_all(VARIADIC branches text[]) RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
DECLARE
    v_nodes text[];
BEGIN
    IF coalesce(cardinality(branches), 0) < 2 THEN
        RAISE EXCEPTION 'df.join_all: at least 2 branches are required, got %', coalesce(cardinality(branches), 0)
            USING ERRCODE = '22023';
    END IF;
    IF array_position(branches, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'df.join_all: branch % is NULL', array_position(branches, NULL) USING ERRCODE = '22004';
    END IF;
    SELECT array_agg(df._ensure(b) ORDER BY o) INTO v_nodes FROM unnest(branches) WITH ORDINALITY AS u(b, o);
    RETURN df._node('JOIN', v_nodes[1], v_nodes[2], NULL, v_nodes[3:], NULL, NULL);
END
$$;

CREATE FUNCTION df.race(a text, b text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df._node('RACE', df._ensure(a), df._ensure(b), NULL, NULL, NULL, NULL) $$;

CREATE FUNCTION df."if"(condition text, then_branch text, else_branch text) RETURNS text
    LANGUAGE sql STRICT
AS $$
    SELECT df._node('IF', df._ensure(then_branch), df._ensure(else_branch), df._ensure(condition), NULL, NULL,
                    NULL)
$$;

CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
    LANGUAGE sql STRICT
AS $$
    SELECT df._node('IF', df._ensure(then_branch), df._ensure(else_branch), NULL, NULL,
                    '{"condition_type":"result_has_rows","result_name":' || to_json(result_name)::text || '}',
                    NULL)
$$;

CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    IF body IS NULL THEN
        RAISE EXCEPTION 'df.loop: body must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN df._node('LOOP', df._ensure(body), NULL, df._ensure(condition), NULL, NULL, NULL);
END
$$;

CREATE FUNCTION df."break"(value text DEFAULT NULL) RETURNS text
    LANGUAGE sql
AS $$
    SELECT df._node('BREAK', NULL, NULL, NULL, NULL,
                    '{"break_value":' || coalesce(to_json(value)::text, 'null') || '}', NULL)
$$;

CREATE FUNCTION df.sleep(seconds bigint) RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
BEGIN
    IF seconds < 0 THEN
        RAISE EXCEPTION 'df.sleep: seconds must be >= 0, got %', seconds USING ERRCODE = '22023';
    END IF;
    RETURN df._node('SLEEP', NULL, NULL, NULL, NULL, seconds::text, NULL);
END
$$;

CREATE FUNCTION df.wait_for_schedule(cron_expr text) RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
DECLARE
    v_error constant text := df._cron_error(cron_expr);
BEGIN
    IF v_error IS NOT NULL THEN
        RAISE EXCEPTION 'df.wait_for_schedule: invalid cron expression ''%'': %', cron_expr, v_error
            USING ERRCODE = '22023';
    END IF;
    RETURN df._node('WAIT_SCHEDULE', NULL, NULL, NULL, NULL,
                    '{"cron_expr":' || to_json(cron_expr)::text || '}', NULL);
END
$$;

CREATE FUNCTION df.wait_for_signal(name text, timeout_seconds integer DEFAULT NULL) RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    IF coalesce(name, '') = '' THEN
        RAISE EXCEPTION 'df.wait_for_signal: signal name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'df.wait_for_signal: timeout_seconds must be > 0, got %', timeout_seconds
            USING ERRCODE = '22023';
    END IF;
    RETURN df._node('SIGNAL', NULL, NULL, NULL, NULL,
                    '{"signal_name":' || to_json(name)::text
                    || ',"timeout_seconds":' || coalesce(timeout_seconds::text, 'null') || '}', NULL);
END
$$;

-- The checks of df.http / df.http_multipart, in the Python DSL's order: enabled (SQL only), parts, headers,
-- URL scheme, method, timeout.
CREATE FUNCTION df._http_check(p_builder text, p_kind text, p_url text, p_method text, p_parts jsonb,
                               p_headers jsonb, p_timeout integer) RETURNS void
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_error text;
BEGIN
    IF NOT df._http_enabled() THEN
        RAISE EXCEPTION '%() is disabled: outbound HTTP requests are disabled in df.settings (set http_enabled)',
            p_builder USING ERRCODE = '0A000';
    END IF;
    IF p_kind = 'HTTP_MULTIPART'
       AND (jsonb_typeof(p_parts) IS DISTINCT FROM 'array' OR jsonb_array_length(p_parts) = 0) THEN
        v_error := 'parts must be a non-empty JSON array';
    END IF;
    v_error := coalesce(v_error, df._http_headers_error(p_headers));
    IF v_error IS NULL AND (p_url IS NULL OR p_method IS NULL) THEN
        v_error := CASE WHEN p_url IS NULL THEN 'url' ELSE 'method' END || ' must not be NULL';
    END IF;
    v_error := coalesce(v_error, df._http_target_error(p_kind, p_url, p_method, p_timeout));
    IF v_error IS NOT NULL THEN
        RAISE EXCEPTION '%: %', p_builder, v_error USING ERRCODE = '22023';
    END IF;
END
$$;

CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL, headers jsonb DEFAULT NULL,
                        timeout_seconds integer DEFAULT 30) RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM df._http_check('df.http', 'HTTP', url, method, NULL, headers, timeout_seconds);
    RETURN df._node('HTTP', NULL, NULL, NULL, NULL,
                    '{"url":' || to_json(url)::text
                    || ',"method":' || to_json(upper(method))::text
                    || ',"body":' || coalesce(to_json(body)::text, 'null')
                    || ',"headers":' || coalesce(df._jsonb_compact(nullif(headers, 'null')), 'null')
                    || ',"timeout_seconds":' || timeout_seconds::text || '}', NULL);
END
$$;

CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL,
                                  headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM df._http_check('df.http_multipart', 'HTTP_MULTIPART', url, method, parts, headers, timeout_seconds);
    RETURN df._node('HTTP_MULTIPART', NULL, NULL, NULL, NULL,
                    '{"url":' || to_json(url)::text
                    || ',"method":' || to_json(upper(method))::text
                    || ',"parts":' || df._jsonb_compact(parts)
                    || ',"headers":' || coalesce(df._jsonb_compact(nullif(headers, 'null')), 'null')
                    || ',"timeout_seconds":' || timeout_seconds::text || '}', NULL);
END
$$;

REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;

------------------------------------------------------------------------------------------------------------
-- Operators (reference §3.1). PostgreSQL gives them all one precedence, left-associative (§3.2).
------------------------------------------------------------------------------------------------------------

CREATE FUNCTION df.as_op(fut text, name text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df."as"(fut, name) $$;

-- `cond ?> then` is not a node: it is a partial if that only `!>` completes.
CREATE FUNCTION df.if_then_op(condition text, then_branch text) RETURNS text
    LANGUAGE sql STRICT
AS $$
    SELECT '{"_partial_if":true,"condition":' || to_json(condition)::text
        || ',"then_branch":' || to_json(then_branch)::text || '}'
$$;

CREATE FUNCTION df.if_else_op(partial_if text, else_branch text) RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
DECLARE
    j constant jsonb := df._try_jsonb(partial_if);
BEGIN
    IF jsonb_typeof(j) IS DISTINCT FROM 'object' OR NOT j ? '_partial_if'
       OR jsonb_typeof(j -> 'condition') IS DISTINCT FROM 'string'
       OR jsonb_typeof(j -> 'then_branch') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression' USING ERRCODE = '22023';
    END IF;
    RETURN df."if"(j ->> 'condition', j ->> 'then_branch', else_branch);
END
$$;

CREATE FUNCTION df.loop_prefix_op(body text) RETURNS text
    LANGUAGE sql STRICT
AS $$ SELECT df.loop(body) $$;

CREATE OPERATOR df.~> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.seq);
CREATE OPERATOR df.|=> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.as_op);
CREATE OPERATOR df.& (LEFTARG = text, RIGHTARG = text, FUNCTION = df."join");
CREATE OPERATOR df.| (LEFTARG = text, RIGHTARG = text, FUNCTION = df.race);
CREATE OPERATOR df.?> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.if_then_op);
CREATE OPERATOR df.!> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.if_else_op);
CREATE OPERATOR df.@> (RIGHTARG = text, FUNCTION = df.loop_prefix_op);

-- pgdurable extensions (design §1): wrapper builders that set a step's retry policy or timeout.
CREATE FUNCTION df.retry(node text, max_attempts integer DEFAULT 3, backoff_ms integer DEFAULT 1000,
                         max_backoff_ms integer DEFAULT 60000, multiplier integer DEFAULT 2,
                         jitter_pct integer DEFAULT 20, retry_on text[] DEFAULT NULL) RETURNS text
    LANGUAGE plpgsql
AS $$
DECLARE
    v_node jsonb := df._ensure(node)::jsonb;
    v_error text;
BEGIN
    v_node := jsonb_set(v_node, '{retry}', jsonb_strip_nulls(jsonb_build_object(
        'max_attempts', max_attempts, 'backoff_ms', backoff_ms, 'max_backoff_ms', max_backoff_ms,
        'multiplier', multiplier, 'jitter_pct', jitter_pct, 'retry_on', to_jsonb(retry_on))));
    v_error := df._extension_error(v_node);
    IF v_error IS NOT NULL THEN
        RAISE EXCEPTION 'df.retry: %', v_error USING ERRCODE = '22023';
    END IF;
    RETURN df._render(df._walk(v_node, false));
END
$$;

CREATE FUNCTION df.timeout(node text, seconds integer) RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
DECLARE
    v_node constant jsonb := jsonb_set(df._ensure(node)::jsonb, '{timeout_seconds}', to_jsonb(seconds));
    v_error constant text := df._extension_error(v_node);
BEGIN
    IF v_error IS NOT NULL THEN
        RAISE EXCEPTION 'df.timeout: %', v_error USING ERRCODE = '22023';
    END IF;
    RETURN df._render(df._walk(v_node, false));
END
$$;

-- pgdurable extension (node type CALL): call a Python function that a worker registered.
CREATE FUNCTION df.call(function text, args jsonb DEFAULT '{}') RETURNS text
    LANGUAGE plpgsql STRICT
AS $$
DECLARE
    v_error constant text := df._call_error(function, args);
BEGIN
    IF v_error IS NOT NULL THEN
        RAISE EXCEPTION '%', v_error USING ERRCODE = '22023';
    END IF;
    RETURN df._node('CALL', NULL, NULL, NULL, NULL,
                    '{"function":' || to_json(function)::text || ',"args":' || df._jsonb_compact(args) || '}', NULL);
END
$$;
