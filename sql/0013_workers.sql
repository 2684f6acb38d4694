-- pgqueue migration 0013: workers announce themselves (for `pgqueue workers` and the
-- dashboard), and an index for the dashboard's dead events.
--
-- Every worker process upserts its row when it starts and at every heartbeat, and deletes it
-- when it stops. A row whose lease expired belongs to a worker that died without saying so
-- (kill -9, lost host, partition): readers skip it, and the next worker to announce itself
-- deletes rows expired for more than an hour. One row per worker process, written every
-- heartbeat (10 s by default): nothing here is on an event's path.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

CREATE TABLE workers (
    worker_id    text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    queues       text[] NOT NULL,
    event_types  text[] NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- heartbeat_at + the worker's lease: past it the worker is taken for dead.
    expires_at   timestamptz NOT NULL,
    -- Events claimed and not yet recorded, as of the last heartbeat.
    in_flight    integer NOT NULL DEFAULT 0,
    CONSTRAINT workers_worker_id_length CHECK (char_length(worker_id) BETWEEN 1 AND 200),
    CONSTRAINT workers_in_flight_nonnegative CHECK (in_flight >= 0)
);

-- Rewritten at every heartbeat: leave room for HOT updates.
ALTER TABLE workers SET (fillfactor = 50);

-- The dashboard's dead events, without reading the table. Dead events accumulate anywhere in a
-- large outbox (1 in 10 rows in `bin/bench --only dashboard`), so any statement that visits
-- their rows reads nearly every page of the table: counting 100,000 dead events per queue and
-- type through outbox_dead_idx took 935 ms with a cold cache, and listing the newest dead ones
-- (outbox_dead_idx, then a sort) 500 ms. This index answers both: the counts by an index-only
-- scan of its entries (queue and type are carried in it), a page of the list by walking it
-- newest first and fetching only the rows shown. Only dead rows are in it, so producers and
-- the happy path never touch it. Building it reads the whole table under this migration's
-- lock (writes wait): 1.0 s for 1,000,000 rows on a loaded 2-core machine.
CREATE INDEX outbox_dead_list_idx ON outbox (id) INCLUDE (queue, event_type)
    WHERE state = 'dead';

INSERT INTO migrations (version, name) VALUES (13, 'workers');
