-- pgqueue migration 0015: a placeholder on branch `flow` only.
--
-- Helper "ordering" owns migrations 0014 and 0015 (ordering keys, rate limits); the loader
-- refuses gaps, so this branch holds their numbers with an empty step. At merge, drop this
-- file and renumber 0016_cancel.sql / 0017_pause.sql after ordering's migrations.
INSERT INTO migrations (version, name) VALUES (15, 'reserved');
