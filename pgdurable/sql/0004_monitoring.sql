-- 0004_monitoring: list_instances, instance_info, instance_nodes (with inferred status), instance_executions,
-- metrics and explain. Everything reads under row-level security, so a role sees its own instances.

-- pg_durable's orchestration name, reported as function_name.
CREATE FUNCTION df._function_name() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 'pg_durable::orchestration::execute-function-graph' $$;

CREATE FUNCTION df._check_list_limit(p_limit integer) RETURNS void
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_max constant integer := df._list_instances_max_limit();
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'df.list_instances: limit_count must be >= 1, got %', coalesce(p_limit::text, 'NULL')
            USING ERRCODE = '22023';
    ELSIF p_limit > v_max THEN
        RAISE EXCEPTION 'df.list_instances: limit_count % exceeds list_instances_max_limit (%)', p_limit, v_max
            USING ERRCODE = '22023', HINT = 'Page with the after_cursor overload, or raise list_instances_max_limit in df.settings.';
    END IF;
END
$$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
    RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint,
                   output text)
    LANGUAGE plpgsql STABLE
AS $$
BEGIN
    PERFORM df._check_list_limit(limit_count);
    RETURN QUERY
    SELECT s.id::text, s.label, df._function_name(), s.status, s.execution_count, s.output
      FROM (SELECT i.id, i.label, i.created_at, i.execution_count,
                   df._effective_status(i.id, i.status) AS status,
                   df._effective_output(i.id, i.status, i.output) AS output
              FROM df.instances i) s
     WHERE status_filter IS NULL OR s.status = status_filter
     ORDER BY s.created_at DESC, s.id
     LIMIT limit_count;
END
$$;

CREATE FUNCTION df._list_cursor(p_created_at timestamptz, p_id text) RETURNS text
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT encode(convert_to('v1|' || to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
                             || '+00|' || p_id, 'UTF8'), 'hex')
$$;

-- The (created_at, id) position of a cursor; raises 'df.list_instances: invalid after_cursor'.
CREATE FUNCTION df._parse_list_cursor(p_cursor text, OUT p_created_at timestamptz, OUT p_id text)
    LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_parts text[];
BEGIN
    IF length(p_cursor) > 512 OR p_cursor !~ '^([0-9a-fA-F]{2})+$' THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
    END IF;
    BEGIN
        v_parts := string_to_array(convert_from(decode(p_cursor, 'hex'), 'UTF8'), '|');
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
    END;
    IF cardinality(v_parts) <> 3 OR v_parts[1] <> 'v1'
       OR v_parts[2] !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}[+-]\d{2}(:\d{2}(:\d{2})?)?$'
       OR v_parts[3] !~ '^[0-9a-f]{8}$' THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
    END IF;
    BEGIN
        p_created_at := v_parts[2]::timestamptz;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
    END;
    p_id := v_parts[3];
END
$$;

CREATE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
                                  after_cursor text DEFAULT NULL)
    RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint,
                   output text, created_at timestamptz, completed_at timestamptz, next_cursor text)
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_after_at timestamptz;
    v_after_id text;
BEGIN
    PERFORM df._check_list_limit(limit_count);
    IF after_cursor IS NOT NULL THEN
        SELECT c.p_created_at, c.p_id INTO v_after_at, v_after_id FROM df._parse_list_cursor(after_cursor) c;
    END IF;
    RETURN QUERY
    WITH page AS (
        SELECT s.*, row_number() OVER (ORDER BY s.created_at DESC, s.id) AS n
          FROM (SELECT i.id, i.label, i.created_at, i.completed_at, i.execution_count,
                       df._effective_status(i.id, i.status) AS status,
                       df._effective_output(i.id, i.status, i.output) AS output
                  FROM df.instances i
                 WHERE (label_filter IS NULL OR i.label = label_filter)
                   AND (after_cursor IS NULL
                        OR i.created_at < v_after_at
                        OR (i.created_at = v_after_at AND i.id > v_after_id))) s
         WHERE status_filter IS NULL OR s.status = status_filter
         ORDER BY s.created_at DESC, s.id
         LIMIT limit_count + 1
    ), last AS (
        SELECT p.created_at, p.id FROM page p WHERE p.n = limit_count
           AND EXISTS (SELECT 1 FROM page q WHERE q.n = limit_count + 1)
    )
    SELECT p.id::text, p.label, df._function_name(), p.status, p.execution_count, p.output, p.created_at,
           p.completed_at, (SELECT df._list_cursor(l.created_at, l.id) FROM last l)
      FROM page p
     WHERE p.n <= limit_count
     ORDER BY p.n;
END
$$;

CREATE FUNCTION df.instance_info(instance_id text)
    RETURNS TABLE (instance_id text, label text, function_name text, function_version text,
                   current_execution_id bigint, status text, output text)
    LANGUAGE sql STABLE
AS $$
    SELECT i.id::text, i.label, df._function_name(), i.graph_format::text, i.execution_count,
           df._effective_status(i.id, i.status), df._effective_output(i.id, i.status, i.output)
      FROM df.instances i
     WHERE i.id = instance_info.instance_id
$$;

-- One row per execution (root-loop generation). Until the runtime records executions, the current one is
-- reported, in the engine's vocabulary.
CREATE FUNCTION df.instance_executions(instance_id text, limit_count integer DEFAULT 5)
    RETURNS TABLE (execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)
    LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF limit_count IS NULL OR limit_count < 1 THEN
        RAISE EXCEPTION 'df.instance_executions: limit_count must be >= 1, got %', coalesce(limit_count::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT i.execution_count,
           CASE df._effective_status(i.id, i.status)
               WHEN 'pending' THEN 'Pending' WHEN 'running' THEN 'Running' WHEN 'completed' THEN 'Completed'
               ELSE 'Failed' END,
           0::bigint,
           (extract(epoch FROM coalesce(i.completed_at, CASE WHEN i.status IN ('failed', 'cancelled')
                                                             THEN i.updated_at END, now()) - i.created_at)
            * 1000)::bigint,
           df._effective_output(i.id, i.status, i.output)
      FROM df.instances i
     WHERE i.id = instance_executions.instance_id
     LIMIT least(limit_count, 10000);
END
$$;

-- Engine-wide counts across all users: SECURITY DEFINER, EXECUTE only for with_grant admins.
CREATE FUNCTION df.metrics()
    RETURNS TABLE (total_instances bigint, running_instances bigint, completed_instances bigint,
                   failed_instances bigint, total_executions bigint, total_events bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*),
           count(*) FILTER (WHERE s.status IN ('pending', 'running')),
           count(*) FILTER (WHERE s.status = 'completed'),
           count(*) FILTER (WHERE s.status IN ('failed', 'cancelled')),
           coalesce(sum(s.execution_count), 0)::bigint,
           0::bigint
      FROM (SELECT df._effective_status(i.id, i.status) AS status, i.execution_count FROM df.instances i) s
$$;
REVOKE EXECUTE ON FUNCTION df.metrics() FROM PUBLIC;

------------------------------------------------------------------------------------------------------------
-- Inferred node status (reference §7.4)
------------------------------------------------------------------------------------------------------------

-- Whether an execution stamp '<scope>::<generation>' is superseded, given the highest generation seen per
-- scope (p_max: scope -> generation).
CREATE FUNCTION df._stamp_superseded(p_stamp text, p_max jsonb) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_parts text[] := coalesce(string_to_array(p_stamp, '::'), '{}');
    v_n integer;
BEGIN
    LOOP
        v_n := cardinality(v_parts);
        IF v_n < 2 OR v_parts[v_n] !~ '^[0-9]+$' THEN
            RETURN false;  -- unparseable stamps fail open
        END IF;
        IF v_parts[v_n]::bigint < coalesce((p_max ->> array_to_string(v_parts[1:v_n - 1], '::'))::bigint, 0) THEN
            RETURN true;
        END IF;
        EXIT WHEN v_n < 4;
        v_parts := v_parts[1:v_n - 2];  -- the parent orchestration's stamp
    END LOOP;
    RETURN false;
END
$$;

CREATE FUNCTION df._inferred_nodes(p_instance text)
    RETURNS TABLE (node_id text, inferred_status text, inferred_status_from_ancestor_id text)
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_root text;
    v_max jsonb;
BEGIN
    SELECT i.root_node INTO v_root FROM df.instances i WHERE i.id = p_instance;
    IF v_root IS NULL THEN
        RETURN;
    END IF;
    SELECT coalesce(jsonb_object_agg(x.scope, x.gen), '{}') INTO v_max
      FROM (SELECT regexp_replace(n.status_details ->> 'execution_id', '::[0-9]+$', '') AS scope,
                   max(substring(n.status_details ->> 'execution_id' FROM '::([0-9]+)$')::bigint) AS gen
              FROM df.nodes n
             WHERE n.instance_id = p_instance AND n.status_details ->> 'execution_id' ~ '::[0-9]+$'
             GROUP BY 1) x;
    RETURN QUERY
    WITH RECURSIVE nodes AS (
        SELECT n.id::text AS id, n.node_type, n.status, n.left_node::text AS left_node,
               n.right_node::text AS right_node,
               CASE WHEN n.node_type IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(n.query) END AS config,
               n.status IN ('completed', 'failed') AS terminal,
               df._stamp_superseded(n.status_details ->> 'execution_id', v_max) AS superseded,
               substring(n.status_details ->> 'execution_id' FROM '::([0-9]+)$')::bigint AS gen
          FROM df.nodes n WHERE n.instance_id = p_instance
    ), walk AS (
        SELECT n.id, NULL::text AS terminal_ancestor, NULL::text AS gen_ancestor, NULL::bigint AS ancestor_gen
          FROM nodes n WHERE n.id = v_root
        UNION ALL
        SELECT c.child::text,
               CASE WHEN p.terminal AND NOT p.superseded THEN p.id ELSE w.terminal_ancestor END,
               CASE WHEN p.gen > coalesce(w.ancestor_gen, -1) THEN p.id ELSE w.gen_ancestor END,
               greatest(p.gen, w.ancestor_gen)
          FROM walk w
          JOIN nodes p ON p.id = w.id
          CROSS JOIN LATERAL (
              SELECT x.child FROM unnest(ARRAY[p.config ->> 'condition_node', p.left_node, p.right_node])
                                  AS x(child) WHERE x.child IS NOT NULL
              UNION ALL
              SELECT e.child FROM jsonb_array_elements_text(
                  CASE WHEN jsonb_typeof(p.config -> 'extra_nodes') = 'array' THEN p.config -> 'extra_nodes'
                       ELSE '[]' END) AS e(child)
          ) c
    )
    SELECT n.id::text,
           CASE
               WHEN w.id IS NULL THEN n.status
               WHEN n.terminal AND n.superseded THEN
                   CASE WHEN w.terminal_ancestor IS NOT NULL THEN 'skipped' ELSE 'pending' END
               WHEN n.terminal THEN n.status
               WHEN w.terminal_ancestor IS NOT NULL THEN 'skipped'
               WHEN n.status = 'running' THEN 'running'
               ELSE 'pending'
           END,
           CASE
               WHEN w.id IS NULL THEN NULL
               WHEN n.terminal AND n.superseded THEN coalesce(w.terminal_ancestor, w.gen_ancestor)
               WHEN n.terminal THEN NULL
               ELSE w.terminal_ancestor
           END
      FROM nodes n LEFT JOIN walk w ON w.id = n.id;
END
$$;

CREATE FUNCTION df.instance_nodes(instance_id_param text)
    RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
                   status text, result text, status_details text, inferred_status text,
                   inferred_status_from_ancestor_id text, updated_at timestamptz)
    LANGUAGE sql STABLE
AS $$
    SELECT n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text, n.status,
           n.result::text, n.status_details::text, f.inferred_status, f.inferred_status_from_ancestor_id,
           n.updated_at
      FROM df.nodes n
      JOIN df._inferred_nodes(instance_id_param) f ON f.node_id = n.id
     WHERE n.instance_id = instance_id_param
$$;

-- pg_durable's pre-0.2.4 shape; the second argument is ignored.
CREATE FUNCTION df.instance_nodes(instance_id_param text, _last_n_executions integer)
    RETURNS TABLE (execution_id bigint, node_id text, node_type text, query text, result_name text,
                   left_node text, right_node text, status text, result text, updated_at timestamptz)
    LANGUAGE sql STABLE
AS $$
    SELECT 1::bigint, n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text,
           n.status, n.result::text, n.updated_at
      FROM df.nodes n
     WHERE n.instance_id = instance_id_param
$$;

------------------------------------------------------------------------------------------------------------
-- df.explain (reference §8)
------------------------------------------------------------------------------------------------------------

-- text if its UTF-8 encoding has at most p_limit bytes, else its longest prefix of at most p_keep bytes
-- that ends on a character boundary, followed by '...'.
CREATE FUNCTION df._truncate_bytes(p_text text, p_limit integer, p_keep integer) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_chars integer;
BEGIN
    IF octet_length(p_text) <= p_limit THEN
        RETURN p_text;
    END IF;
    v_chars := least(length(p_text), p_keep);
    WHILE octet_length(left(p_text, v_chars)) > p_keep LOOP
        v_chars := v_chars - 1;
    END LOOP;
    RETURN left(p_text, v_chars) || '...';
END
$$;

-- A node's own line text (reference §8.3), from the walked graph position p_i.
CREATE FUNCTION df._explain_label(g df._graph, p_i integer) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_type constant text := g.types[p_i];
    v_query constant text := g.queries[p_i];
    c jsonb;
    v_text text;
BEGIN
    IF v_type IN ('BREAK', 'WAIT_SCHEDULE', 'SIGNAL', 'HTTP', 'HTTP_MULTIPART', 'CALL') THEN
        c := df._try_jsonb(v_query);
    END IF;
    v_text := CASE v_type
        WHEN 'SQL' THEN 'SQL: ' || df._truncate_bytes(v_query, 50, 47)
        WHEN 'THEN' THEN 'SEQUENCE'
        WHEN 'JOIN' THEN 'JOIN (' || (2 + coalesce(cardinality(string_to_array(g.extras[p_i], ',')), 0)) || ')'
        WHEN 'RACE' THEN 'RACE'
        WHEN 'IF' THEN 'IF'
        WHEN 'LOOP' THEN CASE WHEN g.conds[p_i] IS NULL THEN 'LOOP (infinite)' ELSE 'LOOP (while)' END
        WHEN 'BREAK' THEN CASE WHEN c ->> 'break_value' IS NULL THEN 'BREAK'
                               ELSE 'BREAK ''' || df._truncate_bytes(c ->> 'break_value', 20, 17) || '''' END
        WHEN 'SLEEP' THEN 'SLEEP ' || v_query || 's'
        WHEN 'WAIT_SCHEDULE' THEN 'WAIT ''' || (c ->> 'cron_expr') || ''''
        WHEN 'SIGNAL' THEN 'SIGNAL ''' || (c ->> 'signal_name') || ''''
                           || coalesce(' (' || (c ->> 'timeout_seconds') || 's)', '')
        WHEN 'CALL' THEN 'CALL ' || df._truncate_bytes(c ->> 'function', 40, 37)
        ELSE v_type || ' ' || upper(c ->> 'method') || ' ' || df._truncate_bytes(c ->> 'url', 40, 37)
    END;
    RETURN v_text || coalesce(' |=> ''' || g.names[p_i] || '''', '');
END
$$;

-- The elements of a THEN chain, left to right.
CREATE FUNCTION df._explain_chain(g df._graph, p_i integer) RETURNS integer[]
    LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_out integer[] := '{}';
    v_stack integer[] := ARRAY[p_i];
    v_top integer;
BEGIN
    WHILE cardinality(v_stack) > 0 LOOP
        v_top := v_stack[cardinality(v_stack)];
        v_stack := v_stack[1:cardinality(v_stack) - 1];
        IF g.types[v_top] = 'THEN' THEN
            v_stack := v_stack || g.rights[v_top] || g.lefts[v_top];
        ELSE
            v_out := v_out || v_top;
        END IF;
    END LOOP;
    RETURN v_out;
END
$$;

-- The lines of node p_i drawn at p_prefix (p_last: last child of its parent); p_marks: marker per position.
CREATE FUNCTION df._explain_node(g df._graph, p_i integer, p_prefix text, p_last boolean, p_marks text[])
    RETURNS SETOF text
    LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_connector constant text := CASE WHEN p_prefix = '' THEN '' WHEN p_last THEN '└─' ELSE '├─' END;
    v_elements integer[];
    v_k integer;
BEGIN
    IF g.types[p_i] = 'THEN' THEN
        v_elements := df._explain_chain(g, p_i);
        FOR v_k IN 1..cardinality(v_elements) LOOP
            RETURN NEXT p_prefix || CASE WHEN v_k = 1 THEN v_connector ELSE '→ ' END
                        || df._explain_label(g, v_elements[v_k]) || coalesce(p_marks[v_elements[v_k]], '');
            RETURN QUERY SELECT * FROM df._explain_sections(g, v_elements[v_k], p_prefix || '    ', p_marks);
        END LOOP;
        RETURN;
    END IF;
    RETURN NEXT p_prefix || v_connector || df._explain_label(g, p_i) || coalesce(p_marks[p_i], '');
    RETURN QUERY SELECT * FROM df._explain_sections(
        g, p_i, CASE WHEN p_prefix = '' THEN '    ' WHEN p_last THEN p_prefix || '    ' ELSE p_prefix || '│   ' END,
        p_marks);
END
$$;

-- The headed child sections of node p_i.
CREATE FUNCTION df._explain_sections(g df._graph, p_i integer, p_prefix text, p_marks text[])
    RETURNS SETOF text
    LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_inner constant text := p_prefix || '  ';
    v_branches integer[];
BEGIN
    CASE g.types[p_i]
    WHEN 'LOOP' THEN
        RETURN NEXT p_prefix || '↻ body:';
        RETURN QUERY SELECT * FROM df._explain_node(g, g.lefts[p_i], v_inner, true, p_marks);
        IF g.conds[p_i] IS NOT NULL THEN
            RETURN NEXT p_prefix || '? while:';
            RETURN QUERY SELECT * FROM df._explain_node(g, g.conds[p_i], v_inner, true, p_marks);
        END IF;
    WHEN 'IF' THEN
        IF g.conds[p_i] IS NOT NULL THEN
            RETURN NEXT p_prefix || '? condition:';
            RETURN QUERY SELECT * FROM df._explain_node(g, g.conds[p_i], v_inner, true, p_marks);
        END IF;
        RETURN NEXT p_prefix || '✓ then:';
        RETURN QUERY SELECT * FROM df._explain_node(g, g.lefts[p_i], v_inner, true, p_marks);
        RETURN NEXT p_prefix || '✗ else:';
        RETURN QUERY SELECT * FROM df._explain_node(g, g.rights[p_i], v_inner, true, p_marks);
    WHEN 'JOIN', 'RACE' THEN
        v_branches := ARRAY[g.lefts[p_i], g.rights[p_i]]
                      || coalesce(string_to_array(g.extras[p_i], ',')::integer[], '{}');
        FOR v_k IN 1..cardinality(v_branches) LOOP
            RETURN NEXT p_prefix || '║ branch ' || v_k || ':';
            RETURN QUERY SELECT * FROM df._explain_node(g, v_branches[v_k], v_inner,
                                                        v_k = cardinality(v_branches), p_marks);
        END LOOP;
    ELSE
        NULL;
    END CASE;
END
$$;

-- pg_durable's finish: trim the end of the text (Unicode White_Space), split at '\n' dropping one '\r'
-- before it, right-pad every line to the longest line's length + 4 characters.
CREATE FUNCTION df._explain_pad(p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    WITH lines AS (
        SELECT regexp_replace(l, '\r$', '') AS line, o
          FROM unnest(string_to_array(
                   regexp_replace(p_text,
                                  '[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$',
                                  ''), E'\n')) WITH ORDINALITY AS u(l, o)
    )
    SELECT string_agg(rpad(line, (SELECT max(length(line)) + 4 FROM lines)), E'\n' ORDER BY o) FROM lines
$$;

CREATE FUNCTION df._explain_tree(g df._graph, p_marks text[] DEFAULT NULL) RETURNS text
    LANGUAGE sql IMMUTABLE
AS $$ SELECT df._explain_pad(string_agg(l, E'\n')) FROM df._explain_node(g, 1, '', true, p_marks) AS l $$;

-- Live mode: header and the tree of the stored graph snapshot, with markers from the inferred status.
CREATE FUNCTION df._explain_instance(p_id text) RETURNS text
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_instance df.instances;
    v_status text;
    v_output text;
    v_graph df._graph;
    v_flat df._flat_node[];
    v_marks text[];
BEGIN
    SELECT * INTO v_instance FROM df.instances i WHERE i.id = p_id;
    IF NOT FOUND THEN
        RETURN format('Instance ''%s'' not found', p_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM df.nodes n WHERE n.instance_id = p_id) THEN
        RETURN format('No nodes found for instance ''%s''', p_id);
    END IF;
    v_status := df._effective_status(v_instance.id, v_instance.status);
    v_output := df._effective_output(v_instance.id, v_instance.status, v_instance.output);
    v_graph := df._walk(v_instance.graph::jsonb, false);
    -- the stored nodes, in the same pre-order as the walked snapshot
    WITH RECURSIVE pre AS (
        SELECT n.id::text AS id, ARRAY[0]::integer[] AS pos
          FROM df.nodes n WHERE n.instance_id = p_id AND n.id = v_instance.root_node
        UNION ALL
        SELECT c.child::text, p.pos || c.k::integer
          FROM pre p JOIN df.nodes n ON n.instance_id = p_id AND n.id = p.id
          CROSS JOIN LATERAL (
              SELECT x.child, x.k FROM unnest(ARRAY[n.left_node, n.right_node,
                  CASE WHEN n.node_type IN ('IF', 'LOOP') THEN df._try_jsonb(n.query) ->> 'condition_node' END])
                  WITH ORDINALITY AS x(child, k) WHERE x.child IS NOT NULL
              UNION ALL
              SELECT e.child, 3 + e.k FROM jsonb_array_elements_text(
                  CASE WHEN n.node_type = 'JOIN' AND jsonb_typeof(df._try_jsonb(n.query) -> 'extra_nodes') = 'array'
                       THEN df._try_jsonb(n.query) -> 'extra_nodes' ELSE '[]' END) WITH ORDINALITY AS e(child, k)
          ) c
    )
    SELECT array_agg(CASE f.inferred_status WHEN 'completed' THEN ' ✓' WHEN 'failed' THEN ' ✗'
                                            WHEN 'running' THEN ' ⏳' WHEN 'skipped' THEN ' ⊘' ELSE ' ○' END
                     ORDER BY p.pos)
      INTO v_marks
      FROM pre p JOIN df._inferred_nodes(p_id) f ON f.node_id = p.id;
    IF cardinality(v_marks) IS DISTINCT FROM cardinality(v_graph.types) THEN
        v_marks := NULL;  -- the rows no longer match the snapshot: show the tree without markers
    END IF;
    RETURN 'Instance: ' || v_instance.id || coalesce(' (' || v_instance.label || ')', '') || E'\n'
        || 'Status:   ' || CASE WHEN v_status = 'completed' THEN '✓' WHEN v_status IN ('failed', 'cancelled') THEN '✗'
                               WHEN v_status = 'running' THEN '⏳' ELSE '○' END || ' ' || v_status || E'\n'
        || coalesce('Output:   ' || CASE WHEN octet_length(v_output) > 60 THEN df._truncate_bytes(v_output, 60, 57)
                                         ELSE v_output END || E'\n', '')
        || E'\n' || df._explain_tree(v_graph, v_marks);
END
$$;

CREATE FUNCTION df.explain(input text) RETURNS text
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
DECLARE
    v_trimmed constant text := btrim(input);
    v_root jsonb;
    v_graph df._graph;
    v_value text;
BEGIN
    IF v_trimmed ~ '^[0-9a-fA-F]{8}$' THEN
        RETURN df._explain_instance(lower(v_trimmed));
    END IF;
    v_root := df._parse_envelope(input);
    IF v_root IS NULL THEN
        IF input ~ '(~>|\|=>|\?>|!>|@>|df\.)' THEN
            BEGIN
                EXECUTE 'SELECT ' || input INTO v_value;
            EXCEPTION WHEN others THEN
                RETURN 'Failed to evaluate expression: ' || SQLERRM;
            END;
            v_root := df._parse_envelope(v_value);
            IF v_root IS NULL THEN
                v_root := jsonb_build_object('node_type', 'SQL', 'query', v_value);
            END IF;
        ELSIF input ~* '^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN) '
              OR input ~* '^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\n' THEN
            v_root := jsonb_build_object('node_type', 'SQL', 'query', input);
        ELSE
            RETURN 'Cannot explain input: expected an 8-character instance id, a graph (the result of df.* '
                   'builders or operators), DSL text such as ''SELECT 1'' ~> ''SELECT 2'', or a SQL statement. '
                   'Hint: pass the DSL expression itself, e.g. SELECT df.explain(''SELECT 1'' ~> ''SELECT 2'');';
        END IF;
    END IF;
    BEGIN
        v_graph := df._walk(v_root, true);
    EXCEPTION WHEN SQLSTATE 'DFG01' THEN
        RETURN 'Invalid durable function graph: ' || SQLERRM;
    END;
    RETURN df._explain_tree(v_graph);
END
$$;
