-- pgqueue migration 0009: the rules on columns written once, as domains.
--
-- PostgreSQL evaluates all of a table's CHECK constraints on every UPDATE of a row, whatever
-- the UPDATE changes; a domain's constraints run only when a value is assigned to the column.
-- The queue, payload, idempotency key and headers are written by the producer and never
-- again, yet as table CHECKs the claim and the completion (two UPDATEs per event) re-ran
-- them, payload::text included: a serialisation of the whole payload, twice per event. On
-- 100 x 1,000-row UPDATEs of small events, the write-once rules cost 0.8 us per row and
-- UPDATE (claim 7.7 -> 6.9 us, completion 6.7 -> 5.8 us); bigger payloads cost more.
--
-- Same rules, same constraint names, same SQLSTATE (23514 check_violation): producers see
-- the same errors. event_type keeps its table CHECKs: the view handler_states reads it, and
-- a column a view reads cannot change type (its two checks are the cheap part).
--
-- Lock: changing a column to a domain over its own type rewrites nothing and reuses the
-- indexes, but checks every existing row under this migration's ACCESS EXCLUSIVE lock:
-- producers and workers wait meanwhile (3.9 s on 1,000,000 rows of 200-byte payloads, 2
-- cores). On a big outbox, prune first, or run it at a quiet hour.
CREATE DOMAIN queue_name AS text
    CONSTRAINT outbox_queue_format
        CHECK (VALUE ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$' AND char_length(VALUE) <= 63);
-- Documented limit: 1 MiB of JSON text. Big blobs belong in a table the payload points to.
CREATE DOMAIN event_payload AS jsonb
    CONSTRAINT outbox_payload_object CHECK (jsonb_typeof(VALUE) = 'object')
    CONSTRAINT outbox_payload_size CHECK (octet_length(VALUE::text) <= 1048576);
CREATE DOMAIN idempotency_key AS text
    CONSTRAINT outbox_idempotency_key_length CHECK (char_length(VALUE) BETWEEN 1 AND 200);
-- Trace context is a few hundred bytes; this is not a second payload.
CREATE DOMAIN event_headers AS jsonb
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(VALUE) = 'object')
    CONSTRAINT outbox_headers_size CHECK (octet_length(VALUE::text) <= 8192);

ALTER TABLE outbox
    DROP CONSTRAINT outbox_queue_format,
    DROP CONSTRAINT outbox_payload_object,
    DROP CONSTRAINT outbox_payload_size,
    DROP CONSTRAINT outbox_idempotency_key_length,
    DROP CONSTRAINT outbox_headers_object,
    DROP CONSTRAINT outbox_headers_size,
    ALTER COLUMN queue TYPE queue_name,
    ALTER COLUMN payload TYPE event_payload,
    ALTER COLUMN idempotency_key TYPE idempotency_key,
    ALTER COLUMN headers TYPE event_headers;

INSERT INTO migrations (version, name) VALUES (9, 'write_once_domains');
