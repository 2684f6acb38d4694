-- pgqueue migration 0011: what the outbox adds to a producer's transaction, made cheaper.
--
-- 1. The NOTIFY no longer serialises the producers' commits.
--
-- A transaction that has issued NOTIFY takes PostgreSQL's database-wide notify lock at commit
-- (PreCommit_Notify) and holds it until its commit record is flushed, so every notifying
-- commit runs alone: no group commit, every other notifying producer waits for each WAL
-- flush. 0001's statement-level trigger only made the notifications fewer; every producer
-- transaction still notified. Measured with pgbench (one order row and one event per
-- transaction, a listening connection, 2 cores, synchronous_commit on): at 16 clients the
-- outbox transaction ran at 0.14-0.17x the tps of the same transaction writing to a plain
-- table, at 64 clients 0.16x.
--
-- Now at most one producer transaction per queue is on the notify path at a time, and it is
-- decided at commit, not at INSERT (a gate taken at INSERT would be held for the rest of a
-- long transaction, and every producer meanwhile would skip its NOTIFY):
--
-- * outbox_notify is a deferred constraint trigger: it runs just before COMMIT, once per
--   transaction and queue (its WHEN clause queues it for the first row of each queue only).
-- * It first takes the queue's "skippers" advisory lock in SHARED mode (try, never waits),
--   then tries the queue's "gate" advisory lock. Whoever gets the gate notifies; the others
--   skip NOTIFY and commit in parallel. Both locks are transaction locks: released when the
--   commit is complete and visible.
-- * A worker that receives the gate holder's notification (payload: the queue name) claims,
--   then looks in pg_locks for producers holding the skippers lock (those that may have
--   skipped behind this gate holder and be still inside their COMMIT), waits until they are
--   gone, and claims again (pgqueue/_listener.py). So an event of a skipping
--   producer waits for the gate holder's notification plus the end of its own commit, never
--   for --poll-interval. The worker never takes the skippers lock itself: while a lock request
--   waits, PostgreSQL refuses new shared ones, and every producer then had to notify.
-- * A producer that cannot take the skippers lock shared (someone holds it exclusively: only an
--   application advisory lock with the same keys does) notifies for itself with payload
--   `<queue>!` (a wake-up that needs no sweep), and never waits.
-- Measured, the code before and after this migration run alternately (three runs each, the
-- machine loaded by other sessions): outbox / plain per run 0.36, 0.37, 0.65 -> 0.61, 0.84,
-- 1.12 at 16 clients, 0.23, 0.23, 0.28 -> 0.75, 1.64, 0.98 at 64 (README,
-- docs/producers-performance.md).
-- Advisory lock keys: (hashtext('<schema>.outbox gate'), hashtext(queue)) and
-- (hashtext('<schema>.outbox skippers'), hashtext(queue)); an application's own advisory locks
-- with these two keys would delay wake-ups (never lose an event: NOTIFY is a hint, workers
-- poll).
--
-- `SET CONSTRAINTS ALL IMMEDIATE` makes the trigger run at INSERT time: then the gate is held
-- from the INSERT to the end of that transaction, and producers that skip meanwhile are still
-- claimed after its notification, only later.
--
-- 2. Fewer table CHECK constraints. PostgreSQL parses and prepares every CHECK constraint of
-- the table again for each INSERT or UPDATE statement (ExecRelCheck), and evaluates each of
-- them on every row an UPDATE writes; a domain's checks are cached with the type and run only
-- when that column is written. For single-row INSERTs the table checks cost about 1.4 us
-- each: 7 checks 10 us of the outbox INSERT's 30-35 us against 20 us without them (20,000
-- single-row INSERTs from a plpgsql loop, median of 3). The single-column rules (run_at,
-- priority, attempt, state) become domains, same names, same SQLSTATE 23514; the two rules
-- that tie columns together (outbox_lease_iff_running, outbox_processed_iff_done) and
-- outbox_handlers_object (the view handler_states reads that column) stay table checks.
-- Lock: every existing row is checked under ACCESS EXCLUSIVE, as in 0009 and 0010; prune
-- first on a big outbox.
--
-- The payload's size rule keeps octet_length(payload::text): no cheaper expression gives the
-- same answer for every payload (a number such as 1e100000 takes 8 bytes in jsonb and
-- 100,001 as text). It costs 0.5 us for a 60-byte payload.

-- Pin what `SET search_path FROM CURRENT` below captures, as 0001 does.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION notify_outbox();

-- Not SECURITY DEFINER: it runs as the producer (pg_notify and the advisory lock functions
-- are PUBLIC by default), so it has no privileges to protect; every name is qualified anyway.
CREATE FUNCTION notify_outbox() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    channel text := TG_TABLE_SCHEMA || '.outbox';
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(hashtext(channel || ' skippers'),
                                            hashtext(NEW.queue)) THEN
        -- Held exclusively by someone: no sweep will wait for us, wake the workers ourselves.
        PERFORM pg_notify(channel, NEW.queue || '!');
    ELSIF pg_try_advisory_xact_lock(hashtext(channel || ' gate'), hashtext(NEW.queue)) THEN
        PERFORM pg_notify(channel, NEW.queue);
    END IF;
    RETURN NULL;
END
$$;

-- Deferred, and queued for the first row of each queue in a transaction only: the WHEN
-- clause runs as each row is inserted, and its set_config() (local to the transaction, and
-- undone with a rolled-back savepoint, like the queued event itself) marks the queue done.
-- Without it a 20,000-row INSERT queued 20,000 deferred calls: 6-10 us per row at COMMIT,
-- as much as the rest of enqueue_many's cost per row; the WHEN costs 0.2 us.
CREATE CONSTRAINT TRIGGER outbox_notify
    AFTER INSERT ON outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (pg_catalog.current_setting('pgqueue.notify_queued', true)
              IS DISTINCT FROM NEW.tableoid::text || ' ' || NEW.queue
          AND pg_catalog.set_config('pgqueue.notify_queued',
                                    NEW.tableoid::text || ' ' || NEW.queue, true) IS NOT NULL)
    EXECUTE FUNCTION notify_outbox();

CREATE DOMAIN event_run_at AS timestamptz
    CONSTRAINT outbox_run_at_finite CHECK (isfinite(VALUE));
CREATE DOMAIN event_priority AS smallint
    CONSTRAINT outbox_priority_range CHECK (VALUE BETWEEN -10 AND 10);
CREATE DOMAIN event_attempt AS integer
    CONSTRAINT outbox_attempt_nonnegative CHECK (VALUE >= 0);
CREATE DOMAIN event_state AS text
    CONSTRAINT outbox_state_check
        CHECK (VALUE IN ('pending', 'running', 'done', 'dead', 'discarded'));

ALTER TABLE outbox
    DROP CONSTRAINT outbox_run_at_finite,
    DROP CONSTRAINT outbox_priority_range,
    DROP CONSTRAINT outbox_attempt_nonnegative,
    DROP CONSTRAINT outbox_state_check,
    ALTER COLUMN run_at TYPE event_run_at,
    ALTER COLUMN priority TYPE event_priority,
    ALTER COLUMN attempt TYPE event_attempt,
    ALTER COLUMN state TYPE event_state;

INSERT INTO migrations (version, name) VALUES (11, 'producer_commit');
