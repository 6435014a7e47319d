/* db.c - the SQLite store behind history, grids and the prompt-embedding cache.
 *
 * Invariants: every statement is prepared with bound parameters; migrations run in one
 * IMMEDIATE transaction that re-reads user_version, so processes that open a new
 * database at the same moment apply each migration exactly once; a run is inserted as
 * 'running' before its work starts, so it is never lost and never shown as ok unless it
 * finished.  See db.h and man/ldm-history.5.
 */
#include "app/db.h"

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"

extern const char *const ldm_schema_migrations[];
extern const int ldm_schema_migration_count;

struct ldm_db {
    sqlite3 *h;
    char *path;
    char host[256];
};

int ldm_db_schema_version(void) { return ldm_schema_migration_count; }

int ldm_db_default_path(char *buf, size_t n) {
    const char *env = getenv("LDM_DB");
    if (env && *env) { snprintf(buf, n, "%s", env); return 0; }
    const char *xdg = getenv("XDG_DATA_HOME");
    if (xdg && *xdg) { snprintf(buf, n, "%s/ldm/ldm.db", xdg); return 0; }
    const char *home = getenv("HOME");
    if (home && *home) { snprintf(buf, n, "%s/.local/share/ldm/ldm.db", home); return 0; }
    return ldm_error("no database path: set LDM_DB, XDG_DATA_HOME or HOME, or pass --db");
}

/* mkdir -p of the folder that will hold `path`. */
static int make_parent_dirs(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = '\0';
    for (char *p = dir + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST)
                return ldm_error("%s: cannot create folder: %s", dir, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    return 0;
}

static int db_fail(ldm_db *db, const char *what) {
    return ldm_error("%s: %s: %s", db->path, what, sqlite3_errmsg(db->h));
}

static int exec_sql(ldm_db *db, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(db->h, sql, NULL, NULL, &msg) != SQLITE_OK) {
        ldm_error("%s: %s", db->path, msg ? msg : sqlite3_errmsg(db->h));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int migrate(ldm_db *db) {
    if (exec_sql(db, "BEGIN IMMEDIATE") != 0) return ldm_error_prefix("starting migration");
    sqlite3_stmt *st;
    int version = -1;
    if (sqlite3_prepare_v2(db->h, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    if (version < 0) { db_fail(db, "reading user_version"); goto fail; }
    if (version > ldm_schema_migration_count) {
        ldm_error("%s: database schema version %d is newer than this ldm %s understands "
                  "(version %d); use a newer ldm or another --db",
                  db->path, version, LDM_VERSION, ldm_schema_migration_count);
        goto fail;
    }
    for (int v = version; v < ldm_schema_migration_count; v++) {
        if (exec_sql(db, ldm_schema_migrations[v]) != 0) {
            ldm_error_prefix("applying schema migration %03d", v + 1);
            goto fail;
        }
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
        if (exec_sql(db, sql) != 0) goto fail;
    }
    if (exec_sql(db, "COMMIT") != 0) goto fail;
    return 0;
fail:
    sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

ldm_db *ldm_db_open(const char *path) {
    if (make_parent_dirs(path) != 0) return NULL;
    ldm_db *db = ldm_xcalloc(1, sizeof *db);
    db->path = ldm_xstrdup(path);
    if (gethostname(db->host, sizeof db->host - 1) != 0) strcpy(db->host, "unknown");
    int rc = sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        ldm_error("%s: cannot open database: %s", path, db->h ? sqlite3_errmsg(db->h) : "out of memory");
        ldm_db_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db->h, 30000);
    sqlite3_extended_result_codes(db->h, 1);
    /* Switching to WAL needs a moment of exclusive access; retry while others open. */
    for (int tries = 0;; tries++) {
        char *msg = NULL;
        rc = sqlite3_exec(db->h, "PRAGMA journal_mode = WAL", NULL, NULL, &msg);
        sqlite3_free(msg);
        if (rc == SQLITE_OK) break;
        if ((rc & 0xff) != SQLITE_BUSY || tries > 300) {
            db_fail(db, "setting WAL journal mode");
            ldm_db_close(db);
            return NULL;
        }
        usleep(10000);
    }
    if (exec_sql(db, "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL") != 0 ||
        migrate(db) != 0) {
        ldm_db_close(db);
        return NULL;
    }
    return db;
}

void ldm_db_close(ldm_db *db) {
    if (!db) return;
    if (db->h) sqlite3_close(db->h);
    free(db->path);
    free(db);
}

const char *ldm_db_path(const ldm_db *db) { return db->path; }

/* ---- small statement helpers ---- */

static sqlite3_stmt *prepare(ldm_db *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) {
        db_fail(db, "preparing statement");
        return NULL;
    }
    return st;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
    if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

/* Step a statement that returns no rows, then finalize it. */
static int step_done(ldm_db *db, sqlite3_stmt *st, const char *what) {
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return ldm_error("%s: %s: %s", db->path, what, sqlite3_errstr(rc));
    return 0;
}

/* ---- embedding cache ---- */

int ldm_db_cache_get(ldm_db *db, const char *bundle_hash, const int32_t *ids, int n_ids,
                     int clip_skip, float *out, size_t n_floats) {
    sqlite3_stmt *st = prepare(db,
        "SELECT embedding FROM embedding_cache "
        "WHERE bundle_hash = ?1 AND token_ids = ?2 AND clip_skip = ?3");
    if (!st) return -1;
    bind_text(st, 1, bundle_hash);
    sqlite3_bind_blob(st, 2, ids, n_ids * (int)sizeof(int32_t), SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, clip_skip);
    int rc = sqlite3_step(st), hit = 0;
    if (rc == SQLITE_ROW) {
        const void *blob = sqlite3_column_blob(st, 0);
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        if (blob && len == n_floats * sizeof(float)) {
            memcpy(out, blob, len);
            hit = 1;
        }
    } else if (rc != SQLITE_DONE) {
        sqlite3_finalize(st);
        return ldm_error("%s: reading the embedding cache: %s", db->path, sqlite3_errstr(rc));
    }
    sqlite3_finalize(st);
    if (!hit) return 0;
    st = prepare(db,
        "UPDATE embedding_cache SET last_used = julianday('now'), hits = hits + 1 "
        "WHERE bundle_hash = ?1 AND token_ids = ?2 AND clip_skip = ?3");
    if (!st) return -1;
    bind_text(st, 1, bundle_hash);
    sqlite3_bind_blob(st, 2, ids, n_ids * (int)sizeof(int32_t), SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, clip_skip);
    if (step_done(db, st, "updating the embedding cache") != 0) return -1;
    return 1;
}

int ldm_db_cache_put(ldm_db *db, const char *bundle_hash, const int32_t *ids, int n_ids,
                     int clip_skip, int hidden, const float *emb, size_t max_bytes) {
    size_t bytes = (size_t)n_ids * (size_t)hidden * sizeof(float);
    if (exec_sql(db, "BEGIN IMMEDIATE") != 0) return -1;
    sqlite3_stmt *st = prepare(db,
        "INSERT OR REPLACE INTO embedding_cache"
        "(bundle_hash, token_ids, clip_skip, hidden, embedding, bytes, last_used) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, julianday('now'))");
    if (!st) goto fail;
    bind_text(st, 1, bundle_hash);
    sqlite3_bind_blob(st, 2, ids, n_ids * (int)sizeof(int32_t), SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, clip_skip);
    sqlite3_bind_int(st, 4, hidden);
    sqlite3_bind_blob64(st, 5, emb, bytes, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)bytes);
    if (step_done(db, st, "writing the embedding cache") != 0) goto fail;
    /* Keep the newest entries whose running total fits; delete the rest. */
    st = prepare(db,
        "DELETE FROM embedding_cache WHERE rowid IN ("
        "  SELECT rowid FROM (SELECT rowid, SUM(bytes) OVER "
        "    (ORDER BY last_used DESC, rowid DESC) AS total FROM embedding_cache) "
        "  WHERE total > ?1)");
    if (!st) goto fail;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)max_bytes);
    if (step_done(db, st, "evicting from the embedding cache") != 0) goto fail;
    if (exec_sql(db, "COMMIT") != 0) goto fail;
    return 0;
fail:
    sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

int ldm_db_cache_stats(ldm_db *db, int64_t *bytes, int64_t *entries) {
    sqlite3_stmt *st = prepare(db, "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM embedding_cache");
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *bytes = sqlite3_column_int64(st, 0);
        *entries = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : ldm_error("%s: reading cache size", db->path);
}

/* ---- history ---- */

int ldm_db_begin(ldm_db *db, ldm_record *r) {
    sqlite3_stmt *st = prepare(db,
        "INSERT INTO generations(grid_id, status, bundle_hash, bundle_path, prompt, "
        "negative_prompt, seed, steps, guidance, scheduler, karras, eta, timestep_spacing, "
        "width, height, clip_skip, backend, ldm_version, output_path, pid, host, batch_size, "
        "batch_index, replay_of) "
        "VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
        "?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)");
    if (!st) return -1;
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
    if (r->grid_id > 0) sqlite3_bind_int64(st, 1, r->grid_id);
    else sqlite3_bind_null(st, 1);
    bind_text(st, 2, r->bundle_hash);
    bind_text(st, 3, r->bundle_path);
    bind_text(st, 4, r->prompt ? r->prompt : "");
    bind_text(st, 5, r->negative_prompt ? r->negative_prompt : "");
    bind_text(st, 6, seed);
    sqlite3_bind_int(st, 7, r->steps);
    sqlite3_bind_double(st, 8, r->guidance);
    bind_text(st, 9, r->scheduler);
    sqlite3_bind_int(st, 10, r->karras);
    sqlite3_bind_double(st, 11, r->eta);
    bind_text(st, 12, r->timestep_spacing);
    sqlite3_bind_int(st, 13, r->width);
    sqlite3_bind_int(st, 14, r->height);
    sqlite3_bind_int(st, 15, r->clip_skip);
    bind_text(st, 16, r->backend);
    bind_text(st, 17, r->ldm_version ? r->ldm_version : LDM_VERSION);
    bind_text(st, 18, r->output_path);
    sqlite3_bind_int64(st, 19, (sqlite3_int64)getpid());
    bind_text(st, 20, db->host);
    sqlite3_bind_int(st, 21, r->batch_size > 0 ? r->batch_size : 1);
    sqlite3_bind_int(st, 22, r->batch_index);
    if (r->replay_of > 0) sqlite3_bind_int64(st, 23, r->replay_of);
    else sqlite3_bind_null(st, 23);
    if (step_done(db, st, "recording the run") != 0) return -1;
    r->id = sqlite3_last_insert_rowid(db->h);
    return 0;
}

int ldm_db_finish(ldm_db *db, const ldm_record *r, const char *status, const char *error) {
    sqlite3_stmt *st = prepare(db,
        "UPDATE generations SET status = ?2, error = ?3, finished_at = "
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), output_path = ?4, png_sha256 = ?5, "
        "t_text_ms = ?6, t_sampling_ms = ?7, t_decode_ms = ?8, t_total_ms = ?9 WHERE id = ?1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, r->id);
    bind_text(st, 2, status);
    bind_text(st, 3, error);
    bind_text(st, 4, r->output_path);
    bind_text(st, 5, r->png_sha256);
    sqlite3_bind_double(st, 6, r->t_text_ms);
    sqlite3_bind_double(st, 7, r->t_sampling_ms);
    sqlite3_bind_double(st, 8, r->t_decode_ms);
    sqlite3_bind_double(st, 9, r->t_total_ms);
    return step_done(db, st, "finishing the run record");
}

int64_t ldm_db_new_grid(ldm_db *db, const char *spec, const char *output_path) {
    sqlite3_stmt *st = prepare(db, "INSERT INTO grids(spec, output_path) VALUES (?1, ?2)");
    if (!st) return -1;
    bind_text(st, 1, spec);
    bind_text(st, 2, output_path);
    if (step_done(db, st, "recording the grid") != 0) return -1;
    return sqlite3_last_insert_rowid(db->h);
}

int ldm_db_set_grid_output(ldm_db *db, int64_t grid_id, const char *output_path) {
    sqlite3_stmt *st = prepare(db, "UPDATE grids SET output_path = ?2 WHERE id = ?1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, grid_id);
    bind_text(st, 2, output_path);
    return step_done(db, st, "recording the grid output");
}

int ldm_db_reap_interrupted(ldm_db *db) {
    sqlite3_stmt *st = prepare(db,
        "SELECT id, pid FROM generations WHERE status = 'running' AND host = ?1");
    if (!st) return -1;
    bind_text(st, 1, db->host);
    int64_t dead[256];
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < 256) {
        pid_t pid = (pid_t)sqlite3_column_int64(st, 1);
        if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) dead[n++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    for (int i = 0; i < n; i++) {
        st = prepare(db,
            "UPDATE generations SET status = 'interrupted', error = 'process ended without "
            "finishing (killed or crashed)' WHERE id = ?1 AND status = 'running'");
        if (!st) return -1;
        sqlite3_bind_int64(st, 1, dead[i]);
        if (step_done(db, st, "marking an interrupted run") != 0) return -1;
    }
    return n;
}

int ldm_db_check(ldm_db *db) {
    static const char *const checks[] = {"PRAGMA integrity_check", "PRAGMA foreign_key_check"};
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st = prepare(db, checks[k]);
        if (!st) return -1;
        int rc = sqlite3_step(st), bad = 0;
        if (rc == SQLITE_ROW) {
            const char *v = (const char *)sqlite3_column_text(st, 0);
            /* integrity_check answers one row "ok"; foreign_key_check answers no rows */
            bad = k == 0 ? !(v && !strcmp(v, "ok")) : 1;
            if (bad) ldm_error("%s: %s: %s%s", db->path, checks[k] + 7, k ? "row in table " : "",
                               v ? v : "?");
        } else if (rc != SQLITE_DONE || k == 0) {
            bad = 1;
            db_fail(db, checks[k] + 7);
        }
        sqlite3_finalize(st);
        if (bad) return -1;
    }
    return 0;
}

/* Turn free text into a safe FTS5 query: every whitespace-separated word becomes a
 * quoted prefix term ("word"*), all of which must match.  Returns malloc'd text. */
static char *fts_query(const char *text) {
    size_t n = strlen(text);
    char *q = ldm_xmalloc(n * 2 + 8 * (n + 1) + 1), *o = q;
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        if (o != q) *o++ = ' ';
        *o++ = '"';
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            if (*p == '"') *o++ = '"';
            *o++ = *p++;
        }
        *o++ = '"';
        *o++ = '*';
    }
    *o = '\0';
    return q;
}

#define RECORD_COLUMNS                                                                   \
    "id, COALESCE(grid_id, 0), created_at, COALESCE(finished_at, ''), status, error, "  \
    "bundle_hash, bundle_path, prompt, negative_prompt, seed, steps, guidance, "         \
    "scheduler, karras, eta, timestep_spacing, width, height, clip_skip, backend, "      \
    "ldm_version, output_path, png_sha256, COALESCE(t_text_ms, 0), "                     \
    "COALESCE(t_sampling_ms, 0), COALESCE(t_decode_ms, 0), COALESCE(t_total_ms, 0), "    \
    "COALESCE(pid, 0), host, batch_size, batch_index, COALESCE(replay_of, 0)"

static const char *col_text(sqlite3_stmt *st, int i) {
    return (const char *)sqlite3_column_text(st, i);
}

static void read_record(sqlite3_stmt *st, ldm_record *r) {
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(st, 0);
    r->grid_id = sqlite3_column_int64(st, 1);
    snprintf(r->created_at, sizeof r->created_at, "%s", col_text(st, 2) ? col_text(st, 2) : "");
    snprintf(r->finished_at, sizeof r->finished_at, "%s", col_text(st, 3) ? col_text(st, 3) : "");
    snprintf(r->status, sizeof r->status, "%s", col_text(st, 4) ? col_text(st, 4) : "");
    r->error = col_text(st, 5);
    r->bundle_hash = col_text(st, 6);
    r->bundle_path = col_text(st, 7);
    r->prompt = col_text(st, 8);
    r->negative_prompt = col_text(st, 9);
    const char *seed = col_text(st, 10);
    r->seed = seed ? strtoull(seed, NULL, 10) : 0;
    r->steps = sqlite3_column_int(st, 11);
    r->guidance = sqlite3_column_double(st, 12);
    r->scheduler = col_text(st, 13);
    r->karras = sqlite3_column_int(st, 14);
    r->eta = sqlite3_column_double(st, 15);
    r->timestep_spacing = col_text(st, 16);
    r->width = sqlite3_column_int(st, 17);
    r->height = sqlite3_column_int(st, 18);
    r->clip_skip = sqlite3_column_int(st, 19);
    r->backend = col_text(st, 20);
    r->ldm_version = col_text(st, 21);
    r->output_path = col_text(st, 22);
    r->png_sha256 = col_text(st, 23);
    r->t_text_ms = sqlite3_column_double(st, 24);
    r->t_sampling_ms = sqlite3_column_double(st, 25);
    r->t_decode_ms = sqlite3_column_double(st, 26);
    r->t_total_ms = sqlite3_column_double(st, 27);
    r->pid = sqlite3_column_int64(st, 28);
    r->host = col_text(st, 29);
    r->batch_size = sqlite3_column_int(st, 30);
    r->batch_index = sqlite3_column_int(st, 31);
    r->replay_of = sqlite3_column_int64(st, 32);
}

int ldm_db_query(ldm_db *db, const ldm_history_filter *f,
                 int (*fn)(const ldm_record *r, void *ctx), void *ctx) {
    sqlite3_stmt *st = prepare(db,
        "SELECT " RECORD_COLUMNS " FROM generations WHERE "
        "(?1 IS NULL OR id IN (SELECT rowid FROM generations_fts WHERE generations_fts MATCH ?1)) "
        "AND (?2 IS NULL OR created_at >= ?2) "
        "AND (?3 IS NULL OR created_at <= ?3) "
        "AND (?4 IS NULL OR bundle_hash LIKE ?4 || '%' OR instr(bundle_path, ?4) > 0) "
        "AND (?5 IS NULL OR status = ?5) "
        "AND (?6 IS NULL OR seed = ?6) "
        "AND (?7 = 0 OR grid_id = ?7) "
        "ORDER BY id DESC LIMIT ?8");
    if (!st) return -1;
    char *q = (f->grep && *f->grep) ? fts_query(f->grep) : NULL;
    char seed[32];
    bind_text(st, 1, q && *q ? q : NULL);
    bind_text(st, 2, f->since);
    bind_text(st, 3, f->until);
    bind_text(st, 4, f->bundle);
    bind_text(st, 5, f->status);
    if (f->has_seed) {
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)f->seed);
        bind_text(st, 6, seed);
    } else {
        sqlite3_bind_null(st, 6);
    }
    sqlite3_bind_int64(st, 7, f->grid_id);
    sqlite3_bind_int64(st, 8, f->limit > 0 ? f->limit : -1);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ldm_record r;
        read_record(st, &r);
        if (fn(&r, ctx)) { rc = SQLITE_DONE; break; }
    }
    free(q);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return ldm_error("%s: reading history: %s", db->path, sqlite3_errmsg(db->h));
    return 0;
}

int ldm_db_get(ldm_db *db, int64_t id, int (*fn)(const ldm_record *r, void *ctx), void *ctx) {
    sqlite3_stmt *st = prepare(db, "SELECT " RECORD_COLUMNS " FROM generations WHERE id = ?1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), found = 0;
    if (rc == SQLITE_ROW) {
        ldm_record r;
        read_record(st, &r);
        fn(&r, ctx);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        found = ldm_error("%s: reading run %lld: %s", db->path, (long long)id, sqlite3_errmsg(db->h));
    }
    sqlite3_finalize(st);
    return found;
}
