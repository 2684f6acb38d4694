-- pgqueue migration 0018: per-handler rate limits (issue 15 part 2).
--
-- A handler registered with rate="100/s" (or "/m", "/h") runs at most that often across every
-- worker and host, optionally per ordering key (rate_per_key). A token bucket per (handler,
-- key) row: a worker takes tokens for the runs it wants in one statement (RATES_TAKE in
-- pgqueue/_queries/rates.py), refilling the bucket by the time elapsed since its last take on
-- the database clock; runs that get no token are deferred like a full concurrency limit (no
-- attempt used). The bucket holds at most one second of tokens (at least one), so a handler
-- idle for a while starts with a burst of one second's worth, never more.
--
-- Why buckets in rows: every worker reads and writes the same bucket under its row lock (FOR
-- UPDATE), so two workers never spend the same token, and a killed worker holds nothing (a
-- token taken is spent; a run deferred by a lost answer waits for nothing else).
--
-- The rates live beside the concurrency limits in handler_limits: the code's value (`rate`,
-- rewritten by every worker at start) and the operator's (`rate_override`, `pgqueue limits
-- --rate HANDLER=100/s`), which wins while it is set.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

CREATE DOMAIN handler_rate AS text
    CONSTRAINT handler_rate_format CHECK (VALUE ~ '^[1-9][0-9]{0,8}/[smh]$');

ALTER TABLE handler_limits
    ADD COLUMN rate handler_rate,
    ADD COLUMN rate_override handler_rate,
    ADD COLUMN rate_per_key boolean NOT NULL DEFAULT false;

-- '100/s' -> 100, '30/m' -> 0.5.
CREATE FUNCTION rate_per_second(rate text) RETURNS float8
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
    SELECT split_part(rate, '/', 1)::float8
           / CASE split_part(rate, '/', 2) WHEN 's' THEN 1 WHEN 'm' THEN 60 ELSE 3600 END
$$;

-- key '' = the handler's own bucket (no rate_per_key, or an event without an ordering key).
CREATE TABLE rate_buckets (
    handler    text NOT NULL REFERENCES handler_limits (handler) ON DELETE CASCADE,
    key        text NOT NULL,
    tokens     float8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, key)
);
-- One UPDATE per take: leave room for HOT updates.
ALTER TABLE rate_buckets SET (fillfactor = 50);

-- Carry privileges over: whoever may take concurrency slots may take tokens; whoever may
-- write the registry's concurrency may write its rate.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT r.rolname FROM pg_roles AS r, pg_class AS c
        WHERE c.oid = 'handler_slots'::regclass AND r.oid <> c.relowner AND NOT r.rolsuper
          AND has_column_privilege(r.oid, c.oid, 'lease_token', 'UPDATE')
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON rate_buckets TO %I', grantee);
    END LOOP;
    FOR grantee IN
        SELECT r.rolname FROM pg_roles AS r, pg_class AS c
        WHERE c.oid = 'handler_limits'::regclass AND r.oid <> c.relowner AND NOT r.rolsuper
          AND has_column_privilege(r.oid, c.oid, 'concurrency', 'UPDATE')
    LOOP
        EXECUTE format('GRANT INSERT (rate, rate_per_key), UPDATE (rate, rate_per_key) '
                       'ON handler_limits TO %I', grantee);
    END LOOP;
END $$;

INSERT INTO migrations (version, name) VALUES (18, 'rates');
