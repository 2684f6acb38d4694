-- pgqueue migration 0002: discarded events, and resumable replays.
--
-- Applied like 0001 (target schema first on search_path, objects unqualified).

-- A dead event an operator gave up on for good (`pgqueue discard`): kept for audit with its
-- handler records and last error, never claimed again (the claim reads only 'pending'), and
-- deleted by `pgqueue prune --discarded`.
--
-- NOT VALID: the old constraint was stricter, so every existing row already satisfies the new
-- one; validating would scan the whole outbox under the ACCESS EXCLUSIVE lock that DROP takes
-- (measured on 1 million rows: 220-520 ms with every worker blocked, against 2 ms NOT VALID).
-- New rows are checked.
ALTER TABLE outbox DROP CONSTRAINT outbox_state_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_state_check
    CHECK (state IN ('pending', 'running', 'done', 'dead', 'discarded')) NOT VALID;

-- One row per `pgqueue replay` run. Each batch of replayed events and the advance of
-- last_id / touched commit in ONE statement, so a replay that is interrupted (Ctrl-C, a lost
-- connection, a killed process) and run again with the same filter resumes after last_id
-- instead of replaying a batch twice. Events processed at or after started_at are never
-- selected: a replayed event that completes again while the replay runs is not replayed twice.
CREATE TABLE replays (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the selection as the operator gave it (type, handler, id ranges, since, until)
    filter      jsonb NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_id     bigint NOT NULL DEFAULT 0,
    touched     bigint NOT NULL DEFAULT 0,
    finished_at timestamptz
);
-- At most one unfinished replay per filter: two operators starting the same replay at once
-- share it instead of replaying every event twice.
CREATE UNIQUE INDEX replays_unfinished_idx ON replays (filter) WHERE finished_at IS NULL;

-- status counts discarded events per type through this index, like dead ones through
-- outbox_dead_idx: only discarded rows enter it, so the hot path pays nothing.
CREATE INDEX outbox_discarded_idx ON outbox (event_type) WHERE state = 'discarded';

INSERT INTO migrations (version, name) VALUES (2, 'steer');
