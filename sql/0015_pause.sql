-- pgqueue migration 0015: paused queues.
--
-- `pgqueue pause QUEUE` inserts a row, `pgqueue resume QUEUE` deletes it. Workers read the
-- rows of their own queues once per poll interval (pgqueue/_pauses.py) and skip the paused
-- ones when they claim; events already running finish. Nothing changes in the claim statement
-- or on the producers' path: a paused queue still accepts events, they wait as pending.
CREATE TABLE queue_pauses (
    queue     queue_name PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    -- who paused it (the operator's name as the CLI or the dashboard knew it), for status
    paused_by text NOT NULL DEFAULT current_user,
    reason    text,
    CONSTRAINT queue_pauses_paused_by_length CHECK (char_length(paused_by) BETWEEN 1 AND 200),
    CONSTRAINT queue_pauses_reason_length CHECK (reason IS NULL OR char_length(reason) <= 500)
);

INSERT INTO migrations (version, name) VALUES (15, 'pause');
