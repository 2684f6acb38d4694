-- pgqueue roles: least privilege for producers, workers and operators.
--
-- Not a migration (roles are cluster-wide and a matter of policy): apply it yourself, once per
-- database and schema, as the owner of the pgqueue schema:
--
--   psql "$DSN" -v ON_ERROR_STOP=1 -v schema=pgqueue -f sql/roles.sql
--   (or: pgqueue roles --schema pgqueue | psql "$DSN" -v ON_ERROR_STOP=1)
--
-- then grant the group roles to your login roles: GRANT pgqueue_producer TO app_user;
--
--   pgqueue_producer  may enqueue (INSERT into outbox, or call enqueue()), nothing else: it
--                     cannot read payloads, update or delete events.
--   pgqueue_worker    may claim, complete, retry events, use the effects ledger and the
--                     concurrency slots.
--   pgqueue_ops       may read everything in the schema (status, dashboards); no writes.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_producer') THEN
        CREATE ROLE pgqueue_producer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_worker') THEN
        CREATE ROLE pgqueue_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_ops') THEN
        CREATE ROLE pgqueue_ops NOLOGIN;
    END IF;
END $$;

-- Nobody gets anything by default.
REVOKE ALL ON SCHEMA :"schema" FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :"schema" FROM PUBLIC;

GRANT USAGE ON SCHEMA :"schema" TO pgqueue_producer, pgqueue_worker, pgqueue_ops;

-- Producer: INSERT of the producer columns only. RETURNING id and the idempotency-key lookup
-- of pgqueue.enqueue() (Python) need SELECT on those two columns, and no others: payloads
-- stay unreadable. The SQL enqueue() function is SECURITY DEFINER and needs EXECUTE only.
GRANT INSERT (event_type, payload, run_at, idempotency_key, queue, priority) ON :"schema".outbox
    TO pgqueue_producer;
GRANT SELECT (id, idempotency_key) ON :"schema".outbox TO pgqueue_producer;
-- The CLI and pgqueue.migrate() check the schema version before they write.
GRANT SELECT ON :"schema".migrations TO pgqueue_producer;
-- The trace context of the producing span (migration 0005), set by Python's enqueue() when
-- a span is active.
GRANT INSERT (headers) ON :"schema".outbox TO pgqueue_producer, pgqueue_worker;
GRANT EXECUTE ON FUNCTION :"schema".enqueue(text, jsonb, timestamptz, text, text, integer)
    TO pgqueue_producer;

-- Worker: claim / complete / heartbeat / rescue / retry are UPDATEs; no DELETE, no DDL.
GRANT SELECT, UPDATE ON :"schema".outbox TO pgqueue_worker;
GRANT SELECT, INSERT ON :"schema".effects TO pgqueue_worker;
GRANT SELECT ON :"schema".migrations, :"schema".handler_states TO pgqueue_worker;
GRANT EXECUTE ON FUNCTION :"schema".enqueue(text, jsonb, timestamptz, text, text, integer)
    TO pgqueue_worker;
GRANT INSERT (event_type, payload, run_at, idempotency_key, queue, priority) ON :"schema".outbox
    TO pgqueue_worker;
-- Workers serving a registry with schedules keep the schedules table (upsert, emit ticks).
GRANT SELECT, INSERT, UPDATE ON :"schema".schedules TO pgqueue_worker;
-- Concurrency limits: a worker writes its registry's limits (never the operator's override)
-- and takes, renews and releases slots (UPDATEs; the slot rows themselves are made by a
-- SECURITY DEFINER trigger).
GRANT SELECT ON :"schema".handler_limits TO pgqueue_worker;
GRANT INSERT (handler, concurrency), UPDATE (concurrency, updated_at)
    ON :"schema".handler_limits TO pgqueue_worker;
GRANT SELECT, UPDATE ON :"schema".handler_slots TO pgqueue_worker;
-- Worker presence (migration 0011): each worker upserts and deletes its own row, and deletes
-- rows of workers dead for over an hour.
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".workers TO pgqueue_worker;

-- Ops: read only.
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO pgqueue_ops;
