-- 001_init.sql - the first ldm database schema: generation history, grids and the
-- prompt-embedding cache.  Applied once, in a transaction, when PRAGMA user_version < 1.
-- Documented for users in man/ldm-history.5.

-- One row per image that ldmgen set out to make.  A row is inserted with status
-- 'running' before sampling starts and updated when the run ends, so a crash leaves
-- a 'running' row whose pid is gone: readers show it as 'interrupted'.
CREATE TABLE generations (
    id               INTEGER PRIMARY KEY,
    grid_id          INTEGER REFERENCES grids(id) ON DELETE SET NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at      TEXT,
    status           TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
    error            TEXT,
    bundle_hash      TEXT NOT NULL,          -- SHA-256 content hash of the .ldmb
    bundle_path      TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    negative_prompt  TEXT NOT NULL DEFAULT '',
    seed             TEXT NOT NULL,          -- decimal uint64 (SQLite integers are signed)
    steps            INTEGER NOT NULL,
    guidance         REAL NOT NULL,
    scheduler        TEXT NOT NULL,          -- ddim, ddpm, pndm, euler, euler_a, dpmpp_2m
    karras           INTEGER NOT NULL DEFAULT 0,
    eta              REAL NOT NULL DEFAULT 0,
    timestep_spacing TEXT,                   -- NULL: the bundle's scheduler config
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
    host             TEXT
);
CREATE INDEX generations_created ON generations(created_at);
CREATE INDEX generations_seed ON generations(seed);
CREATE INDEX generations_bundle ON generations(bundle_hash);

-- A guidance-by-steps grid: its cells are generations with this grid_id.
CREATE TABLE grids (
    id          INTEGER PRIMARY KEY,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    spec        TEXT NOT NULL,               -- e.g. "g=1,3,7.5 n=10,25"
    output_path TEXT
);

-- Full-text search over prompts (external-content FTS5 table kept in sync by triggers).
CREATE VIRTUAL TABLE generations_fts USING fts5(
    prompt, negative_prompt, content='generations', content_rowid='id');
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

-- Prompt-embedding cache: text-encoder output keyed by model, token ids and clip skip.
-- last_used drives least-recently-used eviction under a size cap.
CREATE TABLE embedding_cache (
    bundle_hash TEXT NOT NULL,
    token_ids   BLOB NOT NULL,               -- int32 little-endian, 77 of them
    clip_skip   INTEGER NOT NULL,
    hidden      INTEGER NOT NULL,            -- embedding width
    embedding   BLOB NOT NULL,               -- float32 little-endian [77, hidden]
    bytes       INTEGER NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used   REAL NOT NULL,               -- julianday, for LRU
    hits        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_hash, token_ids, clip_skip)
);
CREATE INDEX embedding_cache_lru ON embedding_cache(last_used);
