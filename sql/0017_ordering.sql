-- pgqueue migration 0017: ordering keys (issue 15 part 1).
--
-- An event may carry an `ordering_key`. A handler registered with ordered=True runs the events
-- of one key one at a time, in id order, across every worker (pgqueue/_ordering.py). The
-- database keeps no lock for that: the worker asks, per ordered (event, handler) unit, whether
-- an earlier event of the same key still waits for that handler (HEADS in
-- pgqueue/_queries/ordering.py), and defers the unit when one does. What that needs here:
--
-- * the column, validated by a domain like the other producer columns (sql/0011 explains why
--   domains and not table checks);
-- * an index over the unfinished keyed events only. Its predicate is false for unkeyed rows,
--   so an event without a key never enters it: unkeyed producers and workers pay one predicate
--   test per written row version, nothing else. Finished rows (done, discarded, and any final
--   state a later migration adds) leave it, so a key's history costs the head check nothing;
-- * enqueue() with `ordering_key` (last, so every positional call keeps its meaning; the old
--   signature is dropped so that `enqueue('t', '{}')` stays unambiguous);
-- * a trigger that wakes the next event of a key when an event of the key leaves 'running'
--   (a finished run: the next may go now) or 'dead' (an operator's retry or discard releases
--   the key). Without it an event held back behind its key's head waits out its deferral
--   backoff (up to 2 s, or 30 s behind a dead head) after the head is done.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

CREATE DOMAIN ordering_key AS text
    CONSTRAINT outbox_ordering_key_length CHECK (char_length(VALUE) BETWEEN 1 AND 200);

ALTER TABLE outbox ADD COLUMN ordering_key ordering_key;

-- Plain CREATE INDEX (not CONCURRENTLY: migrations run in a transaction); the new column is
-- NULL everywhere, so the build reads the table once and writes an empty index.
CREATE INDEX outbox_ordering_idx ON outbox (ordering_key, id)
    WHERE ordering_key IS NOT NULL AND state IN ('pending', 'running', 'dead');

-- The candidates for a held-back key (status, `events list --blocked`, the metric): keyed
-- events that are dead or wait out a failure's retry. Rows enter it only when a keyed event
-- fails, so those listings never read the healthy keyed backlog.
CREATE INDEX outbox_ordering_failed_idx ON outbox (id)
    WHERE ordering_key IS NOT NULL AND state IN ('pending', 'running', 'dead')
      AND (state = 'dead' OR last_error IS NOT NULL);

CREATE FUNCTION enqueue(
    event_type      text,
    payload         jsonb DEFAULT '{}'::jsonb,
    run_at          timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    queue           text DEFAULT 'default',
    priority        integer DEFAULT 0,
    ordering_key    text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO outbox (event_type, payload, run_at, idempotency_key, queue, priority,
                        ordering_key)
    VALUES (enqueue.event_type, enqueue.payload, COALESCE(enqueue.run_at, now()),
            enqueue.idempotency_key, COALESCE(enqueue.queue, 'default'),
            COALESCE(enqueue.priority, 0), enqueue.ordering_key)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT o.id INTO new_id FROM outbox AS o WHERE o.idempotency_key = enqueue.idempotency_key;
    END IF;
    RETURN new_id;
END
$$;
REVOKE ALL ON FUNCTION enqueue(text, jsonb, timestamptz, text, text, integer, text) FROM PUBLIC;

-- Wake the next unfinished event of the key (only the next: waking them all would have every
-- later event of a busy key claimed and deferred again at once). Its deferral is undone: run_at
-- now, and `not_before` dropped from the records that a deferral wrote (those with a
-- `deferred` count); a record waiting out a failure's backoff keeps its not_before.
-- Not SECURITY DEFINER: it runs as whoever changed the state (a worker, an operator), who may
-- update these two columns anyway.
CREATE FUNCTION ordering_wake() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    -- The probe first: most keys have no later event waiting (distinct keys: none at all), and
    -- a probe costs one index descent where the UPDATE below costs its planning and executor
    -- start. Completing 500 keyed rows (none with a successor): 88 ms with the bare UPDATE,
    -- 25 ms without the trigger, 43 ms with this probe against 44 ms without the trigger
    -- (the same run; a machine shared with other sessions).
    IF NOT EXISTS (SELECT 1 FROM outbox AS n
                   WHERE n.ordering_key = NEW.ordering_key AND n.id > NEW.id
                     AND n.state IN ('pending', 'running', 'dead')) THEN
        RETURN NULL;
    END IF;
    UPDATE outbox AS o
    SET run_at = now(),
        handlers = (SELECT jsonb_object_agg(h.key,
                               CASE WHEN h.value ? 'deferred' AND h.value ->> 'state' = 'pending'
                                    THEN h.value - 'not_before' ELSE h.value END)
                    FROM jsonb_each(o.handlers) AS h)
    WHERE o.id = (SELECT n.id FROM outbox AS n
                  WHERE n.ordering_key = NEW.ordering_key AND n.id > NEW.id
                    AND n.state IN ('pending', 'running', 'dead')
                  ORDER BY n.id LIMIT 1)
      AND o.state = 'pending' AND o.run_at > now() AND o.handlers IS NOT NULL;
    RETURN NULL;
END
$$;

-- The WHEN clause is all an unkeyed row pays (evaluated per updated row, nothing queued).
CREATE TRIGGER outbox_ordering_wake
    AFTER UPDATE OF state ON outbox
    FOR EACH ROW
    WHEN (NEW.ordering_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
          AND OLD.state IN ('running', 'dead'))
    EXECUTE FUNCTION ordering_wake();

-- Carry privileges over, as 0004 did: whoever could execute the old enqueue() may execute the
-- new one; whoever may insert a priority may insert an ordering key.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT r.rolname FROM pg_proc AS p, aclexplode(p.proacl) AS a
        JOIN pg_roles AS r ON r.oid = a.grantee
        WHERE p.oid = 'enqueue(text, jsonb, timestamptz, text, text, integer)'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION enqueue(text, jsonb, timestamptz, text, text, '
                       'integer, text) TO %I', grantee);
    END LOOP;
    FOR grantee IN
        SELECT r.rolname FROM pg_roles AS r, pg_class AS c
        WHERE c.oid = 'outbox'::regclass AND r.oid <> c.relowner AND NOT r.rolsuper
          AND has_column_privilege(r.oid, c.oid, 'priority', 'INSERT')
    LOOP
        EXECUTE format('GRANT INSERT (ordering_key) ON outbox TO %I', grantee);
    END LOOP;
END $$;
DROP FUNCTION enqueue(text, jsonb, timestamptz, text, text, integer);

INSERT INTO migrations (version, name) VALUES (17, 'ordering');
