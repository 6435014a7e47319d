-- 002_batch_replay.sql - batch position and replay link for each generation.
-- A batched image (ldmgen -b N) is made together with its batch: replaying it means
-- regenerating the batch with the first seed (seed - batch_index) and keeping image
-- batch_index.  Rows written by schema version 1 were single images (1, 0).
ALTER TABLE generations ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 1;
ALTER TABLE generations ADD COLUMN batch_index INTEGER NOT NULL DEFAULT 0;
-- The generation this one replayed (ldmgen replay ID), or NULL.
ALTER TABLE generations ADD COLUMN replay_of INTEGER REFERENCES generations(id) ON DELETE SET NULL;
