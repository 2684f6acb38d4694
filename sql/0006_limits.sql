-- pgqueue migration 0006: per-handler concurrency limits shared by every worker.
--
-- A limited handler runs only while its worker holds one of the handler's slots. A slot is a
-- row held under a lease (renewed by the worker's heartbeat), so a killed worker's slots free
-- up when their lease expires, exactly like its events.
--
-- Why rows and not advisory locks: a session-level advisory lock lives as long as the session,
-- so holding N handlers' slots at once would pin N connections (or serialize them on one), and
-- a frozen-but-connected worker would hold its locks for ever. Slot rows cost one UPDATE to take
-- several slots at once (FOR UPDATE SKIP LOCKED, no waiting) and one to give them back, need no
-- connection while held, and expire by lease like everything else in pgqueue.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

-- One row per limited handler name (a name shared by several event types shares its limit).
-- `concurrency` is the value in the code (Registry.on(..., concurrency=N)), rewritten by every
-- worker at start; `override` is the operator's (UPDATE handler_limits SET override = 3 ...)
-- and wins while it is set: workers never write it. NULL override = the code's value.
CREATE TABLE handler_limits (
    handler     text PRIMARY KEY,
    concurrency integer,
    override    integer,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT handler_limits_handler_length CHECK (char_length(handler) BETWEEN 1 AND 128),
    CONSTRAINT handler_limits_concurrency_positive CHECK (concurrency IS NULL OR concurrency >= 1),
    CONSTRAINT handler_limits_override_positive CHECK (override IS NULL OR override >= 1)
);

-- Exactly COALESCE(override, concurrency) rows per handler (kept so by the trigger below).
-- Free: lease_token IS NULL, or its lease expired (the holder died or froze).
CREATE TABLE handler_slots (
    handler          text NOT NULL REFERENCES handler_limits (handler) ON DELETE CASCADE,
    slot             integer NOT NULL,
    lease_token      uuid,
    leased_by        text,
    lease_expires_at timestamptz,
    PRIMARY KEY (handler, slot),
    CONSTRAINT handler_slots_lease_complete
        CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);

-- Slots churn (two updates per limited handler run): leave room for HOT updates.
ALTER TABLE handler_slots SET (fillfactor = 50);

-- A changed limit takes effect at once: missing slots are added, slots above the limit are
-- deleted even when held (their handler finishes; its release then finds no row, which is
-- fine), so a lowered limit admits no new run until enough runs have finished. SECURITY
-- DEFINER so the worker role needs no INSERT/DELETE on handler_slots; the pinned search_path
-- (pg_temp last) keeps that safe.
CREATE FUNCTION sync_handler_slots() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    wanted integer := COALESCE(NEW.override, NEW.concurrency, 0);
BEGIN
    INSERT INTO handler_slots (handler, slot)
    SELECT NEW.handler, g FROM generate_series(1, wanted) AS g
    ON CONFLICT DO NOTHING;
    DELETE FROM handler_slots WHERE handler = NEW.handler AND slot > wanted;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION sync_handler_slots() FROM PUBLIC;

CREATE TRIGGER handler_limits_sync
    AFTER INSERT OR UPDATE OF concurrency, override ON handler_limits
    FOR EACH ROW EXECUTE FUNCTION sync_handler_slots();

INSERT INTO migrations (version, name) VALUES (6, 'limits');
