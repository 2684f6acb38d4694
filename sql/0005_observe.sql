-- pgqueue migration 0005: trace context carried with an event.
--
-- headers: string fields a producer passes to the handlers' side, today the W3C trace
-- context of the producing span ({"traceparent": "00-<trace id>-<span id>-01",
-- "tracestate": "..."}), so a handler's span continues the producer's trace. pgqueue.enqueue()
-- in Python fills it when an OpenTelemetry span is active; any other producer may set it in
-- its INSERT. NULL (the common case) costs nothing: no default, no index.
ALTER TABLE outbox ADD COLUMN headers jsonb;

-- NOT VALID: new rows are checked all the same, and every existing row has NULL here (the
-- column is new), so validating would only scan a possibly huge table under this migration's
-- exclusive lock for nothing.
ALTER TABLE outbox
    ADD CONSTRAINT outbox_headers_object
        CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object') NOT VALID,
    -- Trace context is a few hundred bytes; this is not a second payload.
    ADD CONSTRAINT outbox_headers_size CHECK (octet_length(headers::text) <= 8192) NOT VALID;

INSERT INTO migrations (version, name) VALUES (5, 'observe');
