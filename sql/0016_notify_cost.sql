-- pgqueue migration 0016: what the outbox adds to a producer's transaction, cheaper again.
--
-- Measured in instructions, not seconds (valgrind --tool=callgrind on a single-user
-- PostgreSQL 15 backend, prepared statements, one order row and one event per transaction,
-- 600 minus 200 transactions; deterministic, so it holds on a loaded machine): the plain-table
-- transaction of bin/bench --only producers costs 127,000 instructions; the outbox one cost
-- 543,000 before this migration, of which 183,000 were the notify trigger and 92,000 the three
-- table CHECKs. docs/producers-performance.md has the whole breakdown and the method.
--
-- 1. The notify trigger loses its WHEN clause (about -110,000 per transaction). PostgreSQL
--    prepares a trigger's WHEN expression again for every statement (it is read from the
--    catalog and planned per executor run, like a table CHECK), and 0011's WHEN called three
--    functions:
--    130,000 instructions for a one-row INSERT, more than all the outbox's indexes together.
--    The same test now runs inside the function, where PL/pgSQL plans it once per session:
--    the deferred trigger fires once per row at COMMIT, and every row after the first of its
--    queue returns at once. The cost moves to multi-row INSERTs: +9,600 instructions per row
--    at COMMIT (53,900 -> 63,500 per row for a 1,000-row INSERT ... SELECT, about 3 us), which
--    enqueue_many pays; a one-row transaction, the application's case, pays 130,000 less
--    (543,000 -> 413,000 with part 2).
--    The gate is unchanged (0011): one producer per queue notifies, the others skip NOTIFY and
--    the worker sweeps for them.
-- 2. outbox_handlers_object becomes a domain on `handlers` (-21,000): a table CHECK is parsed
--    and planned again for each INSERT or UPDATE statement (ExecRelCheck: 25,000-37,000
--    instructions each here), a domain's check is cached with the type. Same name, same
--    SQLSTATE (23514). The two rules that tie columns together (outbox_lease_iff_running,
--    outbox_processed_iff_done) cannot be domains and stay (about 30,000 each).
--    The view handler_states reads `handlers`, and a column a view reads cannot change type:
--    dropped and made again with its grants, as in 0010. Lock: every existing row is checked
--    under ACCESS EXCLUSIVE (no rewrite); prune first on a big outbox.

DROP TRIGGER outbox_notify ON outbox;

-- Not SECURITY DEFINER (it runs as the producer, with no privileges to protect) and, unlike
-- every other pgqueue function, without `SET search_path`: a function with a SET clause saves
-- and restores the setting on every call, and this one is called once per row at COMMIT
-- (+11,500 instructions a row for a 1,000-row INSERT, 63,500 -> 75,000). Instead every name
-- in it is qualified, operators and types included, so the caller's search_path cannot
-- change what it calls; tests/integration/test_security.py holds it to that.
CREATE OR REPLACE FUNCTION notify_outbox() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    channel pg_catalog.text := TG_TABLE_SCHEMA OPERATOR(pg_catalog.||) '.outbox';
    queued pg_catalog.text := NEW.tableoid::pg_catalog.text OPERATOR(pg_catalog.||) ' '
                              OPERATOR(pg_catalog.||) NEW.queue;
BEGIN
    -- Once per transaction and queue: the marker is local to the transaction (set_config's
    -- third argument), so the next transaction notifies again. Rows of a rolled-back
    -- savepoint never reach this function (their deferred events go with them).
    IF pg_catalog.current_setting('pgqueue.notify_queued', true)
           OPERATOR(pg_catalog.=) queued THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.set_config('pgqueue.notify_queued', queued, true);
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(
            pg_catalog.hashtext(channel OPERATOR(pg_catalog.||) ' skippers'),
            pg_catalog.hashtext(NEW.queue)) THEN
        -- Held exclusively by someone: no sweep will wait for us, wake the workers ourselves.
        PERFORM pg_catalog.pg_notify(channel, NEW.queue OPERATOR(pg_catalog.||) '!');
    ELSIF pg_catalog.pg_try_advisory_xact_lock(
            pg_catalog.hashtext(channel OPERATOR(pg_catalog.||) ' gate'),
            pg_catalog.hashtext(NEW.queue)) THEN
        PERFORM pg_catalog.pg_notify(channel, NEW.queue);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER outbox_notify
    AFTER INSERT ON outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    EXECUTE FUNCTION notify_outbox();

CREATE DOMAIN event_handlers AS jsonb
    CONSTRAINT outbox_handlers_object CHECK (jsonb_typeof(VALUE) = 'object');

DO $$
DECLARE
    grants text[];
    grant_statement text;
BEGIN
    SELECT coalesce(array_agg(format(
               'GRANT %s ON handler_states TO %s%s', a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)), '{}')
    INTO grants
    FROM pg_class AS c
    CROSS JOIN LATERAL aclexplode(c.relacl) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE c.oid = 'handler_states'::regclass AND a.grantee <> c.relowner;

    DROP VIEW handler_states;

    ALTER TABLE outbox
        DROP CONSTRAINT outbox_handlers_object,
        ALTER COLUMN handlers TYPE event_handlers;

    -- Per-handler state as rows, for operators: one row per (event, handler) that has a
    -- record. Events that succeeded first time carry no record (state 'done' says it all).
    CREATE VIEW handler_states AS
    SELECT o.id AS event_id,
           o.event_type,
           h.key AS handler,
           h.value ->> 'state' AS state,
           (h.value ->> 'attempts')::integer AS attempts,
           h.value ->> 'error' AS last_error,
           to_timestamp((h.value ->> 'updated_at')::double precision) AS updated_at
    FROM outbox AS o, jsonb_each(o.handlers) AS h
    WHERE o.handlers IS NOT NULL;

    FOREACH grant_statement IN ARRAY grants LOOP
        EXECUTE grant_statement;
    END LOOP;
END
$$;

INSERT INTO migrations (version, name) VALUES (16, 'notify_cost');
