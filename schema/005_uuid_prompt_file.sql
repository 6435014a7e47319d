-- 005_uuid_prompt_file.sql - a globally unique id for every generation and grid (so
-- that `ldmgen history merge` can tell a generation it already has from a new one), and
-- the prompt file line a generation came from (ldmgen --prompts).
--
-- New rows get a random (version 4) UUID from ldm when they are created.  Rows written
-- before this version get a UUID derived from what identifies them (SHA-256 of id,
-- created_at, host, pid, seed, prompt and bundle hash; version 8, "custom"), computed by
-- the function ldm_legacy_uuid that ldm registers on its connections: the same old row
-- gets the same UUID whether its database is upgraded in place or copied first, so
-- merging an old database twice still adds nothing the second time.
ALTER TABLE generations ADD COLUMN uuid TEXT;
ALTER TABLE generations ADD COLUMN prompt_file TEXT;     -- absolute path, or NULL
ALTER TABLE generations ADD COLUMN prompt_line INTEGER;  -- 1-based line in it, or NULL
ALTER TABLE grids ADD COLUMN uuid TEXT;
UPDATE generations SET uuid = ldm_legacy_uuid('generation', id, created_at, host, pid, seed,
                                              prompt, bundle_hash);
UPDATE grids SET uuid = ldm_legacy_uuid('grid', id, created_at, spec, output_path, NULL, NULL,
                                        NULL);
CREATE UNIQUE INDEX generations_uuid ON generations(uuid);
CREATE UNIQUE INDEX grids_uuid ON grids(uuid);
CREATE INDEX generations_prompt_line ON generations(prompt_file, prompt_line);
-- A row inserted without a uuid (by hand, with the sqlite3 shell) gets a random one.
CREATE TRIGGER generations_uuid_ai AFTER INSERT ON generations WHEN new.uuid IS NULL BEGIN
    UPDATE generations SET uuid = lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
        substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) ||
        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))
    WHERE id = new.id;
END;
CREATE TRIGGER grids_uuid_ai AFTER INSERT ON grids WHEN new.uuid IS NULL BEGIN
    UPDATE grids SET uuid = lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
        substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) ||
        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))
    WHERE id = new.id;
END;
