"""pgqueue: a Postgres-only job queue and transactional outbox."""
