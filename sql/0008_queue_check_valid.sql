-- pgqueue migration 0008: validate 0007's rule on the rows that existed before it.
--
-- Its own transaction: VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE, so producers and
-- workers keep inserting, claiming and completing while it reads the table.
ALTER TABLE outbox VALIDATE CONSTRAINT outbox_queue_format;

INSERT INTO migrations (version, name) VALUES (8, 'queue_check_valid');
