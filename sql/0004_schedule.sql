-- pgqueue migration 0004: priorities, and the table behind periodic (cron) events.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

-- Priority: HIGHER runs first (5 before 0 before -5), default 0. The same direction as the
-- Python peers procrastinate and PgQueuer, so `priority => 10` reads as "more urgent"; Oban,
-- River and graphile-worker count the other way (lower first). smallint: a rank, not a count.
-- The range is small on purpose (21 levels, like Oban's 10): the claim probes every level
-- directly (CLAIM in pgqueue/_queries/core.py), which keeps each probe a bounded index range.
ALTER TABLE outbox ADD COLUMN priority smallint NOT NULL DEFAULT 0
    CONSTRAINT outbox_priority_range CHECK (priority BETWEEN -10 AND 10);

-- The claim takes ready rows by priority, then run_at, then id. Priority leads the index so
-- that, per priority, `queue = $1 AND priority = p AND run_at <= now()` is one bounded index
-- range, already in (run_at, id) order; the claim probes the levels one by one, highest first
-- (CLAIM in pgqueue/_queries/core.py).
--
-- Priority and run_at: only READY rows compete. `run_at <= now()` bounds each range, so an
-- event of priority 10 due tomorrow does not hold back a ready event of priority 0, and the
-- claim never reads future-dated rows (delayed events, durable retries).
--
-- Measured on 2 cores (python -m bench.priority_probe: claims of up to 1,000 rows, median of
-- 150, alternating with 0001's (queue, run_at, id) index and claim on one database, 5 runs):
-- 200,000 ready rows, 10-31 ms with either, neither ahead from run to run; 100,000 rows due
-- tomorrow + 200 ready, 2-9 ms with either. A plain `ORDER BY priority DESC, run_at, id`
-- LIMIT over this index took 60 ms in that second case (PostgreSQL 15 cannot skip a leading
-- column, so it stepped over every future entry), hence the per-priority claim (now one probe
-- per level of the fixed range, see CLAIM). The drain (bench, 20,000 events, one worker), interleaved,
-- 6 runs each: median 24,808 ev/s with 0001's index, 28,558 with this one (spread 18-38k).
--
-- On upgrade, CREATE INDEX reads the whole outbox under a SHARE lock (inserts wait meanwhile;
-- CONCURRENTLY cannot run inside a migration's transaction): prune first on a big table.
DROP INDEX outbox_ready_idx;
CREATE INDEX outbox_ready_idx ON outbox (queue, priority DESC, run_at, id) WHERE state = 'pending';

-- enqueue() gains `priority` (last, so every existing positional call keeps its meaning).
-- integer, not smallint: `priority => 5` is an integer literal, and integer -> smallint is not
-- an implicit cast, so a smallint parameter would make that call "function does not exist".
-- Out of range values fail at the INSERT (outbox_priority_range: -10..10).
-- A new signature is a new function: the privileges on the old one are carried over below.
CREATE FUNCTION enqueue(
    event_type      text,
    payload         jsonb DEFAULT '{}'::jsonb,
    run_at          timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    queue           text DEFAULT 'default',
    priority        integer DEFAULT 0
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO outbox (event_type, payload, run_at, idempotency_key, queue, priority)
    VALUES (enqueue.event_type, enqueue.payload, COALESCE(enqueue.run_at, now()),
            enqueue.idempotency_key, COALESCE(enqueue.queue, 'default'),
            COALESCE(enqueue.priority, 0))
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT o.id INTO new_id FROM outbox AS o WHERE o.idempotency_key = enqueue.idempotency_key;
    END IF;
    RETURN new_id;
END
$$;
REVOKE ALL ON FUNCTION enqueue(text, jsonb, timestamptz, text, text, integer) FROM PUBLIC;

-- Periodic events: one row per schedule name, written by the workers that serve a registry
-- with schedules (code is the source of truth; a worker upserts its schedules at start).
-- Emitting a tick is `UPDATE schedules SET last_tick = $tick WHERE name = $1 AND last_tick <
-- $tick` in the same transaction as the INSERT of the event, so of many workers racing for a
-- tick exactly one emits it (the others' UPDATE re-checks the row after the winner commits and
-- matches nothing).
CREATE TABLE schedules (
    name        text PRIMARY KEY,
    expression  text NOT NULL,            -- cron, 5 fields or 6 (seconds first)
    timezone    text NOT NULL DEFAULT 'UTC',
    event_type  text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue       text NOT NULL DEFAULT 'default',
    priority    smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -10 AND 10),
    -- The last tick emitted; on creation (and when the expression or time zone changes) the
    -- time of that change, so a new schedule starts with the next tick, not a catch-up.
    last_tick   timestamptz NOT NULL DEFAULT now(),
    -- When a worker last registered this schedule from its code: a schedule removed from code
    -- keeps its row (another service may still own it), and `pgqueue schedules` shows it stale.
    synced_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_name_format CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$'),
    CONSTRAINT schedules_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT schedules_last_tick_finite CHECK (isfinite(last_tick))
);

-- Carry privileges over to the new objects, for databases where sql/roles.sql (or the
-- operator's own GRANTs) already ran: whoever could execute the old enqueue() may execute the
-- new one, whoever could UPDATE the outbox (workers) may keep the schedules, whoever could
-- INSERT the outbox's queue column may set a priority, whoever could read the outbox
-- (operators) may read the schedules.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT r.rolname FROM pg_proc AS p, aclexplode(p.proacl) AS a
        JOIN pg_roles AS r ON r.oid = a.grantee
        WHERE p.oid = 'enqueue(text, jsonb, timestamptz, text, text)'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION enqueue(text, jsonb, timestamptz, text, text, '
                       'integer) TO %I', grantee);
    END LOOP;
    FOR grantee IN
        SELECT DISTINCT c.grantee FROM information_schema.role_column_grants AS c
        WHERE c.table_schema = current_schema() AND c.table_name = 'outbox'
          AND c.column_name = 'queue' AND c.privilege_type = 'INSERT'
          AND c.grantee <> c.grantor AND c.grantee <> 'PUBLIC'
    LOOP
        EXECUTE format('GRANT INSERT (priority) ON outbox TO %I', grantee);
    END LOOP;
    FOR grantee IN
        SELECT DISTINCT t.grantee FROM information_schema.role_table_grants AS t
        WHERE t.table_schema = current_schema() AND t.table_name = 'outbox'
          AND t.privilege_type = 'UPDATE' AND t.grantee <> t.grantor
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON schedules TO %I', grantee);
    END LOOP;
    FOR grantee IN
        SELECT DISTINCT t.grantee FROM information_schema.role_table_grants AS t
        WHERE t.table_schema = current_schema() AND t.table_name = 'outbox'
          AND t.privilege_type = 'SELECT' AND t.grantee <> t.grantor
    LOOP
        EXECUTE format('GRANT SELECT ON schedules TO %I', grantee);
    END LOOP;
END $$;
DROP FUNCTION enqueue(text, jsonb, timestamptz, text, text);

INSERT INTO migrations (version, name) VALUES (4, 'schedule');
