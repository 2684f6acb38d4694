-- pgqueue migration 0012: find events by idempotency key without reading the keys.
--
-- enqueue() with a key that is already used returns the first event's id. Python's enqueue
-- found it with SELECT ... WHERE idempotency_key = $1, and its INSERT named the key column as
-- its ON CONFLICT target: both need SELECT on idempotency_key, and a role that may read that
-- column may read every key (they often hold personal data: 'signup:alice@example.com').
-- Producers now insert with a plain ON CONFLICT DO NOTHING (no column named) and ask this
-- function for the ids of the keys they already know; sql/roles.sql no longer lets
-- pgqueue_producer read the column. A producer can still learn whether a key it guesses is
-- used (enqueue returns the existing id: that is what idempotency means), never list them.
--
-- SECURITY DEFINER with a pinned search_path (pg_temp last), like enqueue(); EXECUTE goes to
-- whoever may insert keys today (roles.sql's producer and worker, and any role of yours with
-- INSERT on the outbox), never to PUBLIC.
-- Pin the path (pg_temp last) for SET ... FROM CURRENT below, as 0001 and 0004 do.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

CREATE FUNCTION event_ids_by_keys(keys text[])
RETURNS TABLE (idempotency_key text, id bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
    SELECT o.idempotency_key, o.id FROM outbox AS o WHERE o.idempotency_key = ANY(keys)
$$;
REVOKE ALL ON FUNCTION event_ids_by_keys(text[]) FROM PUBLIC;

DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT r.rolname FROM pg_roles AS r, pg_class AS c
        WHERE c.oid = 'outbox'::regclass AND r.oid <> c.relowner AND NOT r.rolsuper
          AND has_column_privilege(r.oid, c.oid, 'idempotency_key', 'INSERT')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION event_ids_by_keys(text[]) TO %I', grantee);
    END LOOP;
END $$;

INSERT INTO migrations (version, name) VALUES (12, 'key_lookup');
