-- 003_seed_and_cache_key.sql - seeds that sort and compare as numbers, exactly up to
-- 2^64-1; the embedding cache keyed by backend and precision too.
--
-- Before: seed was TEXT, so ORDER BY seed and seed > 100 compared strings.  Now the
-- column has no type affinity: a seed up to 2^63-1 is stored as an INTEGER; a larger
-- one (beyond SQLite's signed integers) as 20-digit TEXT.  SQLite orders every
-- INTEGER before every TEXT, and 20-digit texts compare as their numbers, so ORDER BY
-- seed, seed > 100 and seed = 42 all work numerically.
--
-- SQLite cannot change a column's type in place: the table is rebuilt with the same
-- ids (so the full-text index, grid links and replay links stay valid).
DROP TRIGGER generations_fts_ai;
DROP TRIGGER generations_fts_ad;
DROP TRIGGER generations_fts_au;
DROP INDEX generations_created;
DROP INDEX generations_seed;
DROP INDEX generations_bundle;
ALTER TABLE generations RENAME TO generations_v2;
CREATE TABLE generations (
    id               INTEGER PRIMARY KEY,
    grid_id          INTEGER REFERENCES grids(id) ON DELETE SET NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at      TEXT,
    status           TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
    error            TEXT,
    bundle_hash      TEXT NOT NULL,
    bundle_path      TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    negative_prompt  TEXT NOT NULL DEFAULT '',
    seed             NOT NULL,               -- INTEGER up to 2^63-1, else 20-digit TEXT
    steps            INTEGER NOT NULL,
    guidance         REAL NOT NULL,
    scheduler        TEXT NOT NULL,
    karras           INTEGER NOT NULL DEFAULT 0,
    eta              REAL NOT NULL DEFAULT 0,
    timestep_spacing TEXT,
    width            INTEGER NOT NULL,
    height           INTEGER NOT NULL,
    clip_skip        INTEGER NOT NULL DEFAULT 1,
    backend          TEXT NOT NULL,
    ldm_version      TEXT NOT NULL,
    output_path      TEXT,
    png_sha256       TEXT,
    t_text_ms        REAL,
    t_sampling_ms    REAL,
    t_decode_ms      REAL,
    t_total_ms       REAL,
    pid              INTEGER,
    host             TEXT,
    batch_size       INTEGER NOT NULL DEFAULT 1,
    batch_index      INTEGER NOT NULL DEFAULT 0,
    replay_of        INTEGER REFERENCES generations(id) ON DELETE SET NULL
);
INSERT INTO generations
SELECT id, grid_id, created_at, finished_at, status, error, bundle_hash, bundle_path, prompt,
       negative_prompt,
       CASE WHEN length(seed) < 19 OR (length(seed) = 19 AND seed <= '9223372036854775807')
            THEN CAST(seed AS INTEGER)
            ELSE substr('00000000000000000000' || seed, -20, 20) END,
       steps, guidance, scheduler, karras, eta, timestep_spacing, width, height, clip_skip,
       backend, ldm_version, output_path, png_sha256, t_text_ms, t_sampling_ms, t_decode_ms,
       t_total_ms, pid, host, batch_size, batch_index, replay_of
FROM generations_v2;
DROP TABLE generations_v2;
CREATE INDEX generations_created ON generations(created_at);
CREATE INDEX generations_seed ON generations(seed);
CREATE INDEX generations_bundle ON generations(bundle_hash);
CREATE TRIGGER generations_fts_ai AFTER INSERT ON generations BEGIN
    INSERT INTO generations_fts(rowid, prompt, negative_prompt)
    VALUES (new.id, new.prompt, new.negative_prompt);
END;
CREATE TRIGGER generations_fts_ad AFTER DELETE ON generations BEGIN
    INSERT INTO generations_fts(generations_fts, rowid, prompt, negative_prompt)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt);
END;
CREATE TRIGGER generations_fts_au AFTER UPDATE OF prompt, negative_prompt ON generations BEGIN
    INSERT INTO generations_fts(generations_fts, rowid, prompt, negative_prompt)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt);
    INSERT INTO generations_fts(rowid, prompt, negative_prompt)
    VALUES (new.id, new.prompt, new.negative_prompt);
END;

-- The embedding cache: an embedding made on one backend or in one precision is never
-- used by another (a GPU's fp16 text encoder gives other floats than the CPU's fp32).
-- The cache is a cache: its old rows are dropped, not converted.
DROP TABLE embedding_cache;
CREATE TABLE embedding_cache (
    bundle_hash TEXT NOT NULL,
    backend     TEXT NOT NULL,               -- cpu, cuda
    precision   TEXT NOT NULL,               -- fp32
    token_ids   BLOB NOT NULL,               -- int32 little-endian, 77 of them
    clip_skip   INTEGER NOT NULL,
    hidden      INTEGER NOT NULL,            -- embedding width
    embedding   BLOB NOT NULL,               -- float32 little-endian [77, hidden]
    bytes       INTEGER NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used   REAL NOT NULL,               -- julianday, for LRU
    hits        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_hash, backend, precision, token_ids, clip_skip)
);
CREATE INDEX embedding_cache_lru ON embedding_cache(last_used);
