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

-- Producer: INSERT of the producer columns only, and SELECT of id for RETURNING id: payloads
-- and idempotency keys (often personal data) stay unreadable. pgqueue.enqueue() (Python) finds
-- the id of a key already used through event_ids_by_keys(), and the SQL enqueue() function does
-- it all: both are SECURITY DEFINER and need EXECUTE only. (Before migration 0012 this script
-- granted SELECT on idempotency_key: revoked here when it runs again.)
GRANT INSERT (event_type, payload, run_at, idempotency_key, queue, priority) ON :"schema".outbox
    TO pgqueue_producer;
REVOKE SELECT ON :"schema".outbox FROM pgqueue_producer;
GRANT SELECT (id) ON :"schema".outbox TO pgqueue_producer;
-- (From migration 0012 on; a schema still older gets it from that migration instead.)
SELECT set_config('pgqueue.roles_schema', :'schema', false);
DO $$
DECLARE
    target text := quote_ident(current_setting('pgqueue.roles_schema'));
BEGIN
    IF to_regprocedure(target || '.event_ids_by_keys(text[])') IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.event_ids_by_keys(text[]) '
                       'TO pgqueue_producer, pgqueue_worker', target);
    END IF;
END $$;
-- The CLI and pgqueue.migrate() check the schema version before they write.
GRANT SELECT ON :"schema".migrations TO pgqueue_producer;
-- The trace context of the producing span (migration 0005), set by Python's enqueue() when
-- a span is active.
GRANT INSERT (headers) ON :"schema".outbox TO pgqueue_producer, pgqueue_worker;
-- The ordering key (migration 0017).
GRANT INSERT (ordering_key) ON :"schema".outbox TO pgqueue_producer, pgqueue_worker;
GRANT EXECUTE ON FUNCTION :"schema".enqueue(text, jsonb, timestamptz, text, text, integer, text)
    TO pgqueue_producer;

-- Worker: claim / complete / heartbeat / rescue / retry are UPDATEs of exactly these columns;
-- what a producer wrote (type, payload, key, queue, priority, headers, created_at) stays as
-- written. No DELETE, no DDL. (A table-wide UPDATE, as before issue 11, is revoked first: the
-- REVOKE also drops column grants, which are then made again.)
REVOKE UPDATE ON :"schema".outbox FROM pgqueue_worker;
GRANT SELECT ON :"schema".outbox TO pgqueue_worker;
GRANT UPDATE (state, attempt, run_at, lease_token, leased_by, lease_expires_at, processed_at,
              handlers, last_error) ON :"schema".outbox TO pgqueue_worker;
REVOKE INSERT ON :"schema".effects FROM pgqueue_worker;
GRANT SELECT, INSERT (event_id, handler) ON :"schema".effects TO pgqueue_worker;
GRANT SELECT ON :"schema".migrations, :"schema".handler_states TO pgqueue_worker;
GRANT EXECUTE ON FUNCTION :"schema".enqueue(text, jsonb, timestamptz, text, text, integer, text)
    TO pgqueue_worker;
GRANT INSERT (event_type, payload, run_at, idempotency_key, queue, priority) ON :"schema".outbox
    TO pgqueue_worker;
-- Workers serving a registry with schedules keep the schedules table: the upsert of their
-- registry's schedules (the code owns expression, time zone, type, payload, queue and
-- priority: a worker role can rewrite them, as its code does at every start) and the ticks.
-- Never the name (a schedule keeps its identity) and never DELETE.
REVOKE INSERT, UPDATE ON :"schema".schedules FROM pgqueue_worker;
GRANT SELECT ON :"schema".schedules TO pgqueue_worker;
GRANT INSERT (name, expression, timezone, event_type, payload, queue, priority),
      UPDATE (expression, timezone, event_type, payload, queue, priority, last_tick, synced_at)
    ON :"schema".schedules TO pgqueue_worker;
-- Concurrency limits: a worker writes its registry's limits (never the operator's override)
-- and takes, renews and releases slots (UPDATEs; the slot rows themselves are made by a
-- SECURITY DEFINER trigger).
GRANT SELECT ON :"schema".handler_limits TO pgqueue_worker;
GRANT INSERT (handler, concurrency), UPDATE (concurrency, updated_at)
    ON :"schema".handler_limits TO pgqueue_worker;
REVOKE UPDATE ON :"schema".handler_slots FROM pgqueue_worker;
GRANT SELECT, UPDATE (lease_token, leased_by, lease_expires_at) ON :"schema".handler_slots
    TO pgqueue_worker;
-- Rate limits (migration 0018): the registry's rates, and the token buckets.
GRANT INSERT (rate, rate_per_key), UPDATE (rate, rate_per_key) ON :"schema".handler_limits TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE ON :"schema".rate_buckets TO pgqueue_worker;
-- Worker presence (migration 0013): each worker upserts and deletes its own row, and deletes
-- rows of workers dead for over an hour. Every column is its own presence data.
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".workers TO pgqueue_worker;
-- Paused queues (migration 0015): workers read them to skip those queues when claiming.
GRANT SELECT ON :"schema".queue_pauses TO pgqueue_worker;

-- Ops: read only.
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO pgqueue_ops;
