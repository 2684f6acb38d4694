-- pgqueue migration 0014: a final 'cancelled' state.
--
-- `pgqueue cancel` (and pgqueue.admin.cancel) moves pending and running events to
-- 'cancelled': never claimed again (the claim reads only 'pending'), kept for audit with the
-- operator's reason as last_error, shown by `status`, deleted by `prune --cancelled`. A
-- running event loses its lease at once (outbox_lease_iff_running: only 'running' rows hold a
-- token), so its worker's completion write is refused by the lease fence; the worker learns at
-- its next heartbeat, when the renewal misses the event, and cancels the handler tasks.
--
-- The domain's check is replaced NOT VALID: the new one is wider, so every stored value
-- already satisfies it, and validating would check every row under the lock ALTER DOMAIN
-- takes (0011 measured the same kind of scan at 220-520 ms per million rows). New values are
-- checked.
ALTER DOMAIN event_state DROP CONSTRAINT outbox_state_check;
ALTER DOMAIN event_state ADD CONSTRAINT outbox_state_check
    CHECK (VALUE IN ('pending', 'running', 'done', 'dead', 'discarded', 'cancelled')) NOT VALID;

-- status counts cancelled events per type through this index, like discarded ones through
-- outbox_discarded_idx: only cancelled rows enter it, so producers and the happy path pay
-- nothing (a partial index whose predicate a row fails costs one predicate evaluation).
CREATE INDEX outbox_cancelled_idx ON outbox (event_type) WHERE state = 'cancelled';

INSERT INTO migrations (version, name) VALUES (14, 'cancel');
