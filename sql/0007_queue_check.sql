-- pgqueue migration 0007: the queue name rule without a bounded repetition.
--
-- PostgreSQL evaluates every CHECK constraint of a row on every UPDATE, not only on INSERT,
-- so each event pays for them three times: enqueue, claim and completion. The `{0,62}` of
-- 0001's rule made PostgreSQL's regex engine cost 1.5-1.8 us per row (300,000 rows, INSERT
-- 1,108 -> 671 ms and UPDATE 1,042 -> 619 ms with the rule below). Same rule: first character
-- from the class, the rest from the wider class, at most 63 characters in all.
--
-- NOT VALID: the rule accepts exactly what the old one accepted, and every row passed that
-- one. New and updated rows are checked all the same; 0008 validates the existing rows in its
-- own transaction, under a lock that lets inserts and updates go on.
ALTER TABLE outbox
    DROP CONSTRAINT outbox_queue_format,
    ADD CONSTRAINT outbox_queue_format
        CHECK (queue ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$' AND char_length(queue) <= 63) NOT VALID;

INSERT INTO migrations (version, name) VALUES (7, 'queue_check');
