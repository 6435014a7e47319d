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
#include "core/sha256.h"

extern const char *const ldm_schema_migrations[];
extern const int ldm_schema_migration_count;

struct ldm_db {
    sqlite3 *h;
    char *path;
    char host[256];
};

int ldm_db_schema_version(void) { return ldm_schema_migration_count; }

struct sqlite3 *ldm_db_sqlite(ldm_db *db) { return db->h; }

/* ---- globally unique ids (schema 004) ---- */

static void format_uuid(uint8_t b[16], int version, char out[37]) {
    b[6] = (uint8_t)((b[6] & 0x0f) | (version << 4));
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);   /* RFC 9562 variant */
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = 0;
}

void ldm_uuid_new(char out[37]) {
    uint8_t b[16];
    sqlite3_randomness(16, b);   /* seeded from the operating system's randomness */
    format_uuid(b, 4, out);
}

/* ldm_legacy_uuid(kind, ...): a version-8 UUID from the SHA-256 of its arguments' text
 * (NULL and "" differ), for rows written before schema 004. */
static void legacy_uuid_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    ldm_sha256 s;
    ldm_sha256_init(&s);
    ldm_sha256_update(&s, "ldm legacy uuid", 16);
    for (int i = 0; i < argc; i++) {
        if (sqlite3_value_type(argv[i]) == SQLITE_NULL) {
            ldm_sha256_update(&s, "\1", 2);
            continue;
        }
        const unsigned char *t = sqlite3_value_text(argv[i]);
        int n = sqlite3_value_bytes(argv[i]);
        ldm_sha256_update(&s, "\2", 1);
        if (t) ldm_sha256_update(&s, t, (size_t)n);
        ldm_sha256_update(&s, "", 1);
    }
    uint8_t d[32];
    ldm_sha256_final(&s, d);
    char out[37];
    format_uuid(d, 8, out);
    sqlite3_result_text(ctx, out, -1, SQLITE_TRANSIENT);
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

static int user_version(ldm_db *db) {
    sqlite3_stmt *st;
    int version = -1;
    if (sqlite3_prepare_v2(db->h, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    if (version < 0) db_fail(db, "reading user_version");
    return version;
}

/* Bring the schema up to date.  A database already at this version is left alone
 * without taking the write lock (readers never wait for a writer). */
static int migrate(ldm_db *db) {
    int version = user_version(db);
    if (version < 0) return -1;
    if (version == ldm_schema_migration_count) return 0;
    if (exec_sql(db, "BEGIN IMMEDIATE") != 0) return ldm_error_prefix("starting migration");
    version = user_version(db);   /* another process may have migrated meanwhile */
    if (version < 0) goto fail;
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
    sqlite3_create_function(db->h, "ldm_legacy_uuid", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                            legacy_uuid_fn, NULL, NULL);
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

/* ?1..?5 = the key's columns */
static void bind_key(sqlite3_stmt *st, const ldm_cache_key *k) {
    bind_text(st, 1, k->bundle_hash);
    bind_text(st, 2, k->backend);
    bind_text(st, 3, k->precision);
    sqlite3_bind_blob(st, 4, k->ids, k->n_ids * (int)sizeof(int32_t), SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 5, k->clip_skip);
}
#define KEY_WHERE "bundle_hash = ?1 AND backend = ?2 AND precision = ?3 AND token_ids = ?4 " \
                  "AND clip_skip = ?5"

int ldm_db_cache_get(ldm_db *db, const ldm_cache_key *k, float *out, size_t n_floats) {
    sqlite3_stmt *st = prepare(db, "SELECT embedding FROM embedding_cache WHERE " KEY_WHERE);
    if (!st) return -1;
    bind_key(st, k);
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
        "UPDATE embedding_cache SET last_used = julianday('now'), hits = hits + 1 WHERE " KEY_WHERE);
    if (!st) return -1;
    bind_key(st, k);
    if (step_done(db, st, "updating the embedding cache") != 0) return -1;
    return 1;
}

int ldm_db_cache_put(ldm_db *db, const ldm_cache_key *k, int hidden, const float *emb,
                     size_t max_bytes) {
    size_t bytes = (size_t)k->n_ids * (size_t)hidden * sizeof(float);
    if (exec_sql(db, "BEGIN IMMEDIATE") != 0) return -1;
    sqlite3_stmt *st = prepare(db,
        "INSERT OR REPLACE INTO embedding_cache"
        "(bundle_hash, backend, precision, token_ids, clip_skip, hidden, embedding, bytes, last_used) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, julianday('now'))");
    if (!st) goto fail;
    bind_key(st, k);
    sqlite3_bind_int(st, 6, hidden);
    sqlite3_bind_blob64(st, 7, emb, bytes, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)bytes);
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

/* ---- history: the columns come from the record's field list (app/record.h) ---- */

#define FIELD(r, f, T) ((T *)((char *)(r) + (f)->offset))
#define CFIELD(r, f, T) ((const T *)((const char *)(r) + (f)->offset))

/* A seed as SQL: INTEGER up to 2^63-1, else 20-digit TEXT (schema 003). */
static void bind_seed(sqlite3_stmt *st, int i, uint64_t seed, char buf[24]) {
    if (seed <= (uint64_t)INT64_MAX) {
        sqlite3_bind_int64(st, i, (sqlite3_int64)seed);
    } else {
        snprintf(buf, 24, "%020llu", (unsigned long long)seed);
        sqlite3_bind_text(st, i, buf, -1, SQLITE_TRANSIENT);
    }
}

static uint64_t column_seed(sqlite3_stmt *st, int i) {
    if (sqlite3_column_type(st, i) == SQLITE_INTEGER) return (uint64_t)sqlite3_column_int64(st, i);
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s ? strtoull(s, NULL, 10) : 0;
}

static void bind_field(sqlite3_stmt *st, int i, const ldm_gen_record *r, const ldm_field *f,
                       char seedbuf[24]) {
    switch (f->type) {
    case LDM_FT_STR: case LDM_FT_OSTR: bind_text(st, i, *CFIELD(r, f, char *)); break;
    case LDM_FT_U64: bind_seed(st, i, *CFIELD(r, f, uint64_t), seedbuf); break;
    case LDM_FT_INT: case LDM_FT_BOOL: sqlite3_bind_int(st, i, *CFIELD(r, f, int)); break;
    case LDM_FT_DBL: sqlite3_bind_double(st, i, *CFIELD(r, f, double)); break;
    case LDM_FT_ID: {
        int64_t v = *CFIELD(r, f, int64_t);
        if (v) sqlite3_bind_int64(st, i, v);
        else sqlite3_bind_null(st, i);
        break;
    }
    case LDM_FT_GRID: break;
    }
}

/* Column i of a SELECT of every H field, into r (strings copied). */
static void read_field(sqlite3_stmt *st, int i, ldm_gen_record *r, const ldm_field *f) {
    switch (f->type) {
    case LDM_FT_STR: case LDM_FT_OSTR: {
        const char *s = (const char *)sqlite3_column_text(st, i);
        ldm_record_set(FIELD(r, f, char *), s ? s : (f->type == LDM_FT_STR ? "" : NULL));
        break;
    }
    case LDM_FT_U64: *FIELD(r, f, uint64_t) = column_seed(st, i); break;
    case LDM_FT_INT: case LDM_FT_BOOL: *FIELD(r, f, int) = sqlite3_column_int(st, i); break;
    case LDM_FT_DBL: *FIELD(r, f, double) = sqlite3_column_double(st, i); break;
    case LDM_FT_ID: *FIELD(r, f, int64_t) = sqlite3_column_int64(st, i); break;
    case LDM_FT_GRID: break;
    }
}

typedef struct { char *s; size_t n, cap; } sql_buf;
static void sql_add(sql_buf *b, const char *t) {
    size_t k = strlen(t);
    if (b->n + k + 1 > b->cap) {
        b->cap = (b->n + k + 1) * 2;
        char *p = ldm_xmalloc(b->cap);
        if (b->s) memcpy(p, b->s, b->n);
        free(b->s);
        b->s = p;
    }
    memcpy(b->s + b->n, t, k + 1);
    b->n += k;
}

/* "a, b, c" of the fields with all of `want` and none of `skip` in their views. */
static int column_list(sql_buf *b, int want, int skip, const char *fmt_each) {
    int n = 0;
    char item[96];
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if ((f->views & want) != want || (f->views & skip)) continue;
        snprintf(item, sizeof item, fmt_each, f->name, n + 1);
        if (n) sql_add(b, ", ");
        sql_add(b, item);
        n++;
    }
    return n;
}

int ldm_db_begin(ldm_db *db, ldm_gen_record *r) {
    sql_buf q = {0};
    sql_add(&q, "INSERT INTO generations(");
    int n = column_list(&q, LDM_V_H, LDM_V_R, "%s");
    sql_add(&q, ") VALUES (");
    for (int i = 0; i < n; i++) sql_add(&q, i ? ", ?" : "?");
    sql_add(&q, ")");
    sqlite3_stmt *st = prepare(db, q.s);
    free(q.s);
    if (!st) return -1;
    ldm_record_set(&r->status, "running");
    if (!r->pid) r->pid = (int64_t)getpid();
    if (!r->host) ldm_record_set(&r->host, db->host);
    if (!r->uuid || !r->uuid[0]) {
        char u[37];
        ldm_uuid_new(u);
        ldm_record_set(&r->uuid, u);
    }
    char seedbuf[24];
    int k = 0;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if ((f->views & LDM_V_H) && !(f->views & LDM_V_R)) bind_field(st, ++k, r, f, seedbuf);
    }
    if (step_done(db, st, "recording the run") != 0) return -1;
    r->id = sqlite3_last_insert_rowid(db->h);
    return 0;
}

int ldm_db_finish(ldm_db *db, ldm_gen_record *r, const char *status, const char *error) {
    ldm_record_set(&r->status, status);
    ldm_record_set(&r->error, error);
    sql_buf q = {0};
    sql_add(&q, "UPDATE generations SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ");
    int n = column_list(&q, LDM_V_H | LDM_V_O, 0, "%s = ?%d");
    char tail[48];
    snprintf(tail, sizeof tail, " WHERE id = ?%d", n + 1);
    sql_add(&q, tail);
    sqlite3_stmt *st = prepare(db, q.s);
    free(q.s);
    if (!st) return -1;
    char seedbuf[24];
    int k = 0;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if ((f->views & (LDM_V_H | LDM_V_O)) == (LDM_V_H | LDM_V_O)) bind_field(st, ++k, r, f, seedbuf);
    }
    sqlite3_bind_int64(st, n + 1, r->id);
    return step_done(db, st, "finishing the run record");
}

int64_t ldm_db_new_grid(ldm_db *db, const char *spec, const char *output_path) {
    sqlite3_stmt *st = prepare(db, "INSERT INTO grids(spec, output_path, uuid) VALUES (?1, ?2, ?3)");
    if (!st) return -1;
    char u[37];
    ldm_uuid_new(u);
    bind_text(st, 1, spec);
    bind_text(st, 2, output_path);
    bind_text(st, 3, u);
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

/* SELECT of every H field, in the field list's order. */
static char *select_sql(const char *tail) {
    sql_buf q = {0};
    sql_add(&q, "SELECT ");
    column_list(&q, LDM_V_H, 0, "%s");
    sql_add(&q, " FROM generations ");
    sql_add(&q, tail);
    return q.s;
}

static void read_record(sqlite3_stmt *st, ldm_gen_record *r) {
    ldm_record_init(r);
    int k = 0;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if (f->views & LDM_V_H) read_field(st, k++, r, f);
    }
}

int ldm_db_query(ldm_db *db, const ldm_history_filter *f,
                 int (*fn)(const ldm_gen_record *r, void *ctx), void *ctx) {
    char *sql = select_sql("WHERE "
        "(?1 IS NULL OR id IN (SELECT rowid FROM generations_fts WHERE generations_fts MATCH ?1)) "
        "AND (?2 IS NULL OR created_at >= ?2) "
        "AND (?3 IS NULL OR created_at <= ?3) "
        "AND (?4 IS NULL OR bundle_hash LIKE ?4 || '%' OR instr(bundle_path, ?4) > 0) "
        "AND (?5 IS NULL OR status = ?5) "
        "AND (?6 IS NULL OR seed = ?6) "
        "AND (?7 = 0 OR grid_id = ?7) "
        "AND (?9 IS NULL OR prompt_file = ?9) "
        "AND (?10 = 0 OR prompt_line = ?10) "
        "AND (?11 IS NULL OR uuid = ?11) "
        "ORDER BY id DESC LIMIT ?8");
    sqlite3_stmt *st = prepare(db, sql);
    free(sql);
    if (!st) return -1;
    char *q = (f->grep && *f->grep) ? fts_query(f->grep) : NULL;
    char seed[24];
    bind_text(st, 1, q && *q ? q : NULL);
    bind_text(st, 2, f->since);
    bind_text(st, 3, f->until);
    bind_text(st, 4, f->bundle);
    bind_text(st, 5, f->status);
    if (f->has_seed) {
        bind_seed(st, 6, f->seed, seed);
    } else {
        sqlite3_bind_null(st, 6);
    }
    sqlite3_bind_int64(st, 7, f->grid_id);
    sqlite3_bind_int64(st, 8, f->limit > 0 ? f->limit : -1);
    bind_text(st, 9, f->prompt_file);
    sqlite3_bind_int64(st, 10, f->prompt_line);
    bind_text(st, 11, f->uuid);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ldm_gen_record r;
        read_record(st, &r);
        int stop = fn(&r, ctx);
        ldm_record_free(&r);
        if (stop) { rc = SQLITE_DONE; break; }
    }
    free(q);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return ldm_error("%s: reading history: %s", db->path, sqlite3_errmsg(db->h));
    return 0;
}

int ldm_db_get(ldm_db *db, int64_t id, ldm_gen_record *r) {
    char *sql = select_sql("WHERE id = ?1");
    sqlite3_stmt *st = prepare(db, sql);
    free(sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), found = 0;
    if (rc == SQLITE_ROW) {
        read_record(st, r);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        found = ldm_error("%s: reading run %lld: %s", db->path, (long long)id, sqlite3_errmsg(db->h));
    }
    sqlite3_finalize(st);
    return found;
}
