-- pgqueue migration 0019: the ordering trigger plans its statements once per session again.
--
-- 0017's ordering_wake() fires once per keyed row whose state leaves 'running' or 'dead': on
-- the worker's completion of every keyed event. The worker's control connections run with
-- plan_cache_mode = force_custom_plan (pgqueue/_db.py CONTROL_SETTINGS: its batch statements
-- take arrays whose size the planner must see), and PL/pgSQL's statements go through the same
-- plan cache: under that setting the trigger's probe was planned again for every row.
--
-- Measured with EXPLAIN (ANALYZE, BUFFERS) of the worker's COMPLETE_DONE on a connection with
-- the worker's settings, 1,000 events per statement, 20,000 events each with its own key
-- (python -m bench.ordering_probe, two runs each on a shared machine): the trigger took
-- 125-173 us per event, the whole completion 137-190 us, against 11-17 us for an unkeyed
-- event's; with this setting on the function, the trigger takes 11-14 us and the completion
-- 25-30 us. The buffers touched are the same (13.4 per event either way, the probe is one
-- descent of outbox_ordering_idx): the difference was planning.
-- In instructions (callgrind on a single-user PostgreSQL 15 backend, the same two statements
-- as prepared statements under force_custom_plan, 13 minus 3 batches of 1,000, per event):
-- claim and completion of an unkeyed event 167,000 (claim 97,000); of a keyed one 906,000
-- before this migration, 262,000 with it (claim 131,000): the keyed completion went from
-- 775,000 to 131,000 instructions, against 69,000 unkeyed.
-- The SET clause costs a save and restore of the setting per call (about 3 us, see 0016),
-- which the per-row planning it saves outweighs many times over.
--
-- plan_cache_mode = auto: the probe and the UPDATE take their parameters from NEW, whose
-- values (one key, one id) never change how they should be planned; the generic plan after
-- five calls is the right one.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_catalog, pg_temp', false);

ALTER FUNCTION ordering_wake() SET plan_cache_mode = auto;

INSERT INTO migrations (version, name) VALUES (19, 'ordering_cost');
