-- pgqueue migration 0001: the outbox table, its producer contract and its NOTIFY trigger.
--
-- Apply with `pgqueue migrate`, or with psql alone (see README): the target schema must exist
-- and be first on search_path. Every object below is created unqualified in that schema, and
-- every function pins its search_path to it, so one file serves any --schema name.

DO $$
BEGIN
    IF current_schema() IS NULL OR current_schema() = 'public' THEN
        RAISE EXCEPTION 'no target schema: run CREATE SCHEMA pgqueue and SET search_path TO pgqueue first';
    END IF;
END $$;

-- Pin the path (pg_temp last, so a temporary table can never shadow ours inside the
-- SECURITY DEFINER function below). SET ... FROM CURRENT on each function captures it.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

CREATE TABLE migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per event. The row is the unit of claiming; per-handler state rides in `handlers`
-- (NULL on the happy path, so success costs no per-handler write).
--
-- state: pending (ready at run_at) -> running (claimed under a lease) -> done | dead, or back
-- to pending for a durable retry / a rescued lease.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text NOT NULL DEFAULT 'default',
    event_type       text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key  text,
    state            text NOT NULL DEFAULT 'pending',
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempt          integer NOT NULL DEFAULT 0,
    lease_token      uuid,
    leased_by        text,
    lease_expires_at timestamptz,
    -- {"<handler name>": {"state": "pending|done|dead", "attempts": n, "seen": event attempt
    --   when written, "error": text, "not_before": epoch seconds, "updated_at": epoch seconds}}
    handlers         jsonb,
    last_error       text,
    processed_at     timestamptz,
    CONSTRAINT outbox_event_type_length CHECK (char_length(event_type) BETWEEN 1 AND 128),
    CONSTRAINT outbox_event_type_format CHECK (event_type ~ '^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$'),
    CONSTRAINT outbox_queue_format CHECK (queue ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,62}$'),
    CONSTRAINT outbox_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    -- Documented limit: 1 MiB of JSON text. Big blobs belong in a table the payload points to.
    CONSTRAINT outbox_payload_size CHECK (octet_length(payload::text) <= 1048576),
    CONSTRAINT outbox_idempotency_key_length
        CHECK (idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    -- 'infinity' would never run and breaks the due-time arithmetic.
    CONSTRAINT outbox_run_at_finite CHECK (isfinite(run_at)),
    CONSTRAINT outbox_state_check CHECK (state IN ('pending', 'running', 'done', 'dead')),
    CONSTRAINT outbox_processed_iff_done CHECK ((state = 'done') = (processed_at IS NOT NULL)),
    CONSTRAINT outbox_lease_iff_running
        CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT outbox_attempt_nonnegative CHECK (attempt >= 0),
    CONSTRAINT outbox_handlers_object CHECK (handlers IS NULL OR jsonb_typeof(handlers) = 'object')
);

-- The claim walks this index in (run_at, id) order and touches only pending rows, so the
-- millions of done rows a busy outbox accumulates cost the claim nothing.
CREATE INDEX outbox_ready_idx ON outbox (queue, run_at, id) WHERE state = 'pending';
-- The rescuer finds expired leases here without scanning the table.
CREATE INDEX outbox_lease_idx ON outbox (lease_expires_at) WHERE state = 'running';
CREATE UNIQUE INDEX outbox_idempotency_key_idx ON outbox (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- status / retry look at dead rows by type.
CREATE INDEX outbox_dead_idx ON outbox (event_type) WHERE state = 'dead';
CREATE INDEX outbox_processed_idx ON outbox (processed_at) WHERE state = 'done';

-- A queue table churns: vacuum it early and leave room for HOT updates.
ALTER TABLE outbox SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01,
                        autovacuum_analyze_scale_factor = 0.02);

-- One NOTIFY per inserting statement and queue (a 10,000-row INSERT sends one per queue it
-- touches). The payload is the queue name only: notifications are visible to every user and
-- limited to 8000 bytes, so event data never goes there. Postgres folds identical
-- notifications within a transaction, so a transaction of many inserts also sends one.
CREATE FUNCTION notify_outbox() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', q.queue)
    FROM (SELECT DISTINCT queue FROM new_rows) AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- The producer contract for any SQL client:
--   SELECT pgqueue.enqueue('order.placed', '{"order_id": 42}');
-- Returns the event id. With an idempotency key, a second call inserts nothing and returns
-- the id of the first. SECURITY DEFINER so that a producer role needs EXECUTE only (it may not
-- read the outbox); the pinned search_path (pg_temp last) keeps that safe.
CREATE FUNCTION enqueue(
    event_type      text,
    payload         jsonb DEFAULT '{}'::jsonb,
    run_at          timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    queue           text DEFAULT 'default'
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO outbox (event_type, payload, run_at, idempotency_key, queue)
    VALUES (enqueue.event_type, enqueue.payload, COALESCE(enqueue.run_at, now()),
            enqueue.idempotency_key, COALESCE(enqueue.queue, 'default'))
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT o.id INTO new_id FROM outbox AS o WHERE o.idempotency_key = enqueue.idempotency_key;
    END IF;
    RETURN new_id;
END
$$;
REVOKE ALL ON FUNCTION enqueue(text, jsonb, timestamptz, text, text) FROM PUBLIC;

-- Per-handler state as rows, for operators: one row per (event, handler) that has a record.
-- Events that succeeded first time carry no record (their state 'done' says it all).
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

-- The idempotency helper's ledger (pgqueue.once): one row per (event, handler) whose effect
-- was recorded. Written in the handler's own transaction together with the effect, so a
-- re-delivered event finds the row and skips the effect.
CREATE TABLE effects (
    event_id   bigint NOT NULL,
    handler    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, handler)
);

INSERT INTO migrations (version, name) VALUES (1, 'outbox');
