/* merge.c - history databases into one: check, copy, remap, replace atomically.  See
 * merge.h.
 *
 * The copy works on the tables' own column lists (PRAGMA table_info), so a column added
 * by a later migration is merged without a change here.  Every statement's SQL is built
 * from those column names only (quoted), never from row content.
 */
#include "app/merge.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/db.h"

typedef struct { char *s; size_t n, cap; } sbuf;
static void sb_add(sbuf *b, const char *t) {
    size_t k = strlen(t);
    if (b->n + k + 1 > b->cap) {
        b->cap = (b->n + k + 1) * 2 + 64;
        char *p = ldm_xmalloc(b->cap);
        if (b->s) memcpy(p, b->s, b->n);
        free(b->s);
        b->s = p;
    }
    memcpy(b->s + b->n, t, k + 1);
    b->n += k;
}

/* ---- checking a database file before it is used ---- */

/* The schema version of an ldm history at path, checked; -1 with an LDM_DATA (or
 * LDM_RUNTIME) error naming it. */
static int check_db(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return ldm_error("%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return ldm_error_kind(LDM_DATA, "%s: not a file", path);
    if (st.st_size == 0) return ldm_error_kind(LDM_DATA, "%s: empty file, not an ldm history database", path);
    char head[16] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return ldm_error("%s: %s", path, strerror(errno));
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got != sizeof head || memcmp(head, "SQLite format 3", 16))
        return ldm_error_kind(LDM_DATA, "%s: not an SQLite database", path);
    sqlite3 *h = NULL;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        ldm_error_kind(LDM_DATA, "%s: cannot open: %s", path, h ? sqlite3_errmsg(h) : "out of memory");
        sqlite3_close(h);
        return -1;
    }
    sqlite3_busy_timeout(h, 30000);
    int version = -1, tables = 0, rc = -1;
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        version = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    q = NULL;
    if (version < 0) {
        ldm_error_kind(LDM_DATA, "%s: not a readable SQLite database: %s", path, sqlite3_errmsg(h));
        goto out;
    }
    if (version > ldm_db_schema_version()) {
        ldm_error_kind(LDM_DATA, "%s: database schema version %d is newer than this ldm %s understands "
                       "(version %d); merge with a newer ldm", path, version, LDM_VERSION,
                       ldm_db_schema_version());
        goto out;
    }
    if (sqlite3_prepare_v2(h, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN "
                           "('generations', 'grids', 'embedding_cache')", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        tables = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    q = NULL;
    if (version < 1 || tables != 3) {
        ldm_error_kind(LDM_DATA, "%s: not an ldm history database (schema version %d, %d of its 3 tables)",
                       path, version, tables);
        goto out;
    }
    if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &q, NULL) != SQLITE_OK) {
        ldm_error_kind(LDM_DATA, "%s: damaged database: %s", path, sqlite3_errmsg(h));
        goto out;
    }
    int r = sqlite3_step(q);
    const char *v = r == SQLITE_ROW ? (const char *)sqlite3_column_text(q, 0) : NULL;
    if (!v || strcmp(v, "ok")) {
        ldm_error_kind(LDM_DATA, "%s: damaged database (integrity_check: %.200s)", path,
                       v ? v : sqlite3_errmsg(h));
        goto out;
    }
    rc = version;
out:
    sqlite3_finalize(q);
    sqlite3_close(h);
    return rc;
}

/* ---- files ---- */

static void remove_db_files(const char *path) {
    char p[4200];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-journal", path);
    unlink(p);
}

/* A consistent copy of database src at dst (SQLite's online backup). */
static int copy_db(const char *src, const char *dst) {
    sqlite3 *from = NULL, *to = NULL;
    int rc = -1;
    if (sqlite3_open_v2(src, &from, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        ldm_error("%s: %s", src, from ? sqlite3_errmsg(from) : "out of memory");
        goto out;
    }
    if (sqlite3_open_v2(dst, &to, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        ldm_error("%s: %s", dst, to ? sqlite3_errmsg(to) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(from, 30000);
    sqlite3_backup *b = sqlite3_backup_init(to, "main", from, "main");
    if (!b) { ldm_error("%s: copying %s: %s", dst, src, sqlite3_errmsg(to)); goto out; }
    int s = sqlite3_backup_step(b, -1);
    sqlite3_backup_finish(b);
    if (s != SQLITE_DONE) { ldm_error("%s: copying %s: %s", dst, src, sqlite3_errstr(s)); goto out; }
    rc = 0;
out:
    sqlite3_close(from);
    sqlite3_close(to);
    return rc;
}

static int fsync_path(const char *path, int dir) {
    int fd = open(path, O_RDONLY | (dir ? O_DIRECTORY : 0));
    if (fd < 0) return dir ? 0 : ldm_error("%s: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 || dir ? 0 : ldm_error("%s: fsync: %s", path, strerror(errno));
    close(fd);
    return rc;
}

/* ---- SQL helpers ---- */

static int exec(sqlite3 *h, const char *sql, const char *what) {
    char *msg = NULL;
    if (sqlite3_exec(h, sql, NULL, NULL, &msg) != SQLITE_OK) {
        ldm_error("%s: %s", what, msg ? msg : sqlite3_errmsg(h));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int64_t scalar(sqlite3 *h, const char *sql) {
    sqlite3_stmt *st;
    int64_t v = -1;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Quoted column names of schema.table except those in skip (NULL-terminated): "a", "b".
 * With prefix, each is prefix."name".  The caller frees *out.  -1 on error. */
static int columns(sqlite3 *h, const char *schema, const char *table, const char *const *skip,
                   const char *prefix, char **out, int *count) {
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA %s.table_info(%s)", schema, table);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK)
        return ldm_error("%s: %s", sql, sqlite3_errmsg(h));
    sbuf b = {0};
    sb_add(&b, "");
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 1);
        int skipped = 0;
        for (int i = 0; skip && skip[i]; i++) skipped |= !strcmp(name, skip[i]);
        if (skipped) continue;
        if (n++) sb_add(&b, ", ");
        if (prefix) { sb_add(&b, prefix); sb_add(&b, "."); }
        sb_add(&b, "\"");
        for (const char *c = name; *c; c++) sb_add(&b, *c == '"' ? "\"\"" : (char[2]){*c, 0});
        sb_add(&b, "\"");
    }
    sqlite3_finalize(st);
    *out = b.s;
    if (count) *count = n;
    return 0;
}

/* The same column list in both schemas (both are at this ldm's version, so they are,
 * unless someone altered a table by hand). */
static int same_columns(sqlite3 *h, const char *table, const char *path) {
    char *a = NULL, *b = NULL;
    int rc = columns(h, "main", table, NULL, NULL, &a, NULL) || columns(h, "src", table, NULL, NULL, &b, NULL)
                 ? -1 : 0;
    if (!rc && strcmp(a, b))
        rc = ldm_error_kind(LDM_DATA, "%s: table %s has other columns than this ldm's (%s; expected %s)",
                            path, table, b, a);
    free(a);
    free(b);
    return rc;
}

static int run(sqlite3 *h, const char *sql, int64_t *changes) {
    if (exec(h, sql, "merging") != 0) return -1;
    if (changes) *changes = sqlite3_changes64(h);
    return 0;
}

/* ---- one input into the open output ---- */

static int merge_one(sqlite3 *h, const char *path, const char *label, ldm_merge_stats *st) {
    memset(st, 0, sizeof *st);
    sqlite3_stmt *a;
    if (sqlite3_prepare_v2(h, "ATTACH DATABASE ?1 AS src", -1, &a, NULL) != SQLITE_OK)
        return ldm_error("%s: %s", label, sqlite3_errmsg(h));
    sqlite3_bind_text(a, 1, path, -1, SQLITE_TRANSIENT);
    int r = sqlite3_step(a);
    sqlite3_finalize(a);
    if (r != SQLITE_DONE) return ldm_error("%s: cannot attach: %s", label, sqlite3_errmsg(h));
    static const char *const gen_skip[] = {"id", "grid_id", "replay_of", NULL};
    static const char *const id_skip[] = {"id", NULL};
    char *gcols = NULL, *gcols_s = NULL, *grcols = NULL, *grcols_s = NULL, *ccols = NULL, *ccols_s = NULL;
    sbuf q = {0};
    int rc = -1;
    if (same_columns(h, "generations", label) || same_columns(h, "grids", label) ||
        same_columns(h, "embedding_cache", label) ||
        columns(h, "main", "generations", gen_skip, NULL, &gcols, NULL) ||
        columns(h, "main", "generations", gen_skip, "s", &gcols_s, NULL) ||
        columns(h, "main", "grids", id_skip, NULL, &grcols, NULL) ||
        columns(h, "main", "grids", id_skip, "s", &grcols_s, NULL) ||
        columns(h, "main", "embedding_cache", NULL, NULL, &ccols, NULL) ||
        columns(h, "main", "embedding_cache", NULL, "s", &ccols_s, NULL))
        goto detach;
    if (exec(h, "BEGIN IMMEDIATE", label)) goto detach;
    int64_t src_rows = scalar(h, "SELECT count(*) FROM src.generations");
    int64_t max_before = scalar(h, "SELECT COALESCE(max(id), 0) FROM main.generations");
    if (src_rows < 0 || max_before < 0) { ldm_error("%s: %s", label, sqlite3_errmsg(h)); goto rollback; }

    /* grids, known by uuid */
    q.n = 0;
    sb_add(&q, "INSERT INTO main.grids(");
    sb_add(&q, grcols);
    sb_add(&q, ") SELECT ");
    sb_add(&q, grcols_s);
    sb_add(&q, " FROM src.grids s WHERE s.uuid IS NULL OR s.uuid NOT IN "
               "(SELECT uuid FROM main.grids WHERE uuid IS NOT NULL) ORDER BY s.id");
    if (run(h, q.s, &st->grids) ||
        run(h, "CREATE TEMP TABLE IF NOT EXISTS ldm_gridmap(src_id INTEGER PRIMARY KEY, out_id INTEGER); "
               "DELETE FROM ldm_gridmap; "
               "INSERT INTO ldm_gridmap SELECT s.id, m.id FROM src.grids s JOIN main.grids m ON m.uuid = s.uuid",
            NULL))
        goto rollback;

    /* generations, known by uuid, in their order; grid ids mapped */
    q.n = 0;
    sb_add(&q, "INSERT INTO main.generations(");
    sb_add(&q, gcols);
    sb_add(&q, ", grid_id) SELECT ");
    sb_add(&q, gcols_s);
    sb_add(&q, ", (SELECT out_id FROM ldm_gridmap WHERE src_id = s.grid_id) FROM src.generations s "
               "WHERE s.uuid IS NULL OR s.uuid NOT IN (SELECT uuid FROM main.generations WHERE uuid IS NOT NULL) "
               "ORDER BY s.id");
    if (run(h, q.s, &st->added)) goto rollback;
    st->present = src_rows - st->added;
    /* replay links: the new id of the row replayed */
    char sql[1024];
    snprintf(sql, sizeof sql,
             "CREATE TEMP TABLE IF NOT EXISTS ldm_genmap(src_id INTEGER PRIMARY KEY, out_id INTEGER); "
             "DELETE FROM ldm_genmap; "
             "INSERT INTO ldm_genmap SELECT s.id, m.id FROM src.generations s JOIN main.generations m ON m.uuid = s.uuid; "
             "UPDATE main.generations SET replay_of = (SELECT g2.out_id FROM ldm_genmap g1 "
             "  JOIN src.generations s ON s.id = g1.src_id JOIN ldm_genmap g2 ON g2.src_id = s.replay_of "
             "  WHERE g1.out_id = main.generations.id) WHERE id > %lld", (long long)max_before);
    if (run(h, sql, NULL)) goto rollback;
    /* runs OUT has as running (or found dead) that the input has finished since */
    q.n = 0;
    sb_add(&q, "UPDATE main.generations SET (");
    sb_add(&q, gcols);
    sb_add(&q, ") = (SELECT ");
    sb_add(&q, gcols_s);
    sb_add(&q, " FROM src.generations s WHERE s.uuid = main.generations.uuid) WHERE id <= ");
    snprintf(sql, sizeof sql, "%lld", (long long)max_before);
    sb_add(&q, sql);
    sb_add(&q, " AND (status = 'running' OR (status = 'interrupted' AND finished_at IS NULL)) AND uuid IN "
               "(SELECT uuid FROM src.generations WHERE finished_at IS NOT NULL)");
    if (run(h, q.s, &st->updated)) goto rollback;

    /* the embedding cache */
    int64_t before = scalar(h, "SELECT count(*) FROM main.embedding_cache");
    q.n = 0;
    sb_add(&q, "INSERT INTO main.embedding_cache(");
    sb_add(&q, ccols);
    sb_add(&q, ") SELECT ");
    sb_add(&q, ccols_s);
    sb_add(&q, " FROM src.embedding_cache s WHERE true ON CONFLICT(bundle_hash, backend, precision, "
               "token_ids, clip_skip) DO UPDATE SET last_used = max(last_used, excluded.last_used), "
               "hits = max(hits, excluded.hits)");
    if (run(h, q.s, NULL)) goto rollback;
    st->cache = scalar(h, "SELECT count(*) FROM main.embedding_cache") - before;
    if (exec(h, "COMMIT", label)) goto rollback;
    rc = 0;
    goto detach;
rollback:
    ldm_error_prefix("%s", label);
    sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
detach:
    sqlite3_exec(h, "DETACH DATABASE src", NULL, NULL, NULL);
    free(q.s);
    free(gcols); free(gcols_s); free(grcols); free(grcols_s); free(ccols); free(ccols_s);
    return rc;
}

ldm_status ldm_db_merge(const char *out, const char *const *in, int n, ldm_merge_stats *per,
                        ldm_merge_stats *total) {
    if (total) memset(total, 0, sizeof *total);
    if (n < 1) return ldm_error_kind(LDM_USAGE, "history merge: no input database"), LDM_USAGE;
    /* ---- every input, and OUT when it exists, checked before anything is written ---- */
    int *version = ldm_xcalloc((size_t)n, sizeof *version);
    ldm_status rc = LDM_OK;
    for (int i = 0; i < n && !rc; i++)
        if ((version[i] = check_db(in[i])) < 0) rc = ldm_last_status();
    struct stat st;
    int out_exists = stat(out, &st) == 0;
    if (!rc && out_exists && check_db(out) < 0) {
        ldm_error_prefix("output exists and cannot be merged into (it was not changed)");
        rc = ldm_last_status();
    }
    char wal[4200];
    snprintf(wal, sizeof wal, "%s-wal", out);
    if (!rc && out_exists && stat(wal, &st) == 0 && st.st_size > 0) {
        ldm_error("%s is in use (%s is not empty): close the programs that have it open, then merge",
                  out, wal);
        rc = LDM_RUNTIME;
    }
    if (rc) { free(version); return rc; }

    /* ---- the merge is built in a temporary file beside OUT ---- */
    char tmp[4200], tmp_in[4300];
    snprintf(tmp, sizeof tmp, "%s.merge.%ld.tmp", out, (long)getpid());
    remove_db_files(tmp);
    ldm_db *db = NULL;
    if (out_exists && copy_db(out, tmp)) goto fail;
    if (!(db = ldm_db_open(tmp))) goto fail;
    sqlite3 *h = ldm_db_sqlite(db);
    for (int i = 0; i < n; i++) {
        const char *src = in[i];
        if (version[i] < ldm_db_schema_version()) {   /* upgrade a copy, never the input */
            snprintf(tmp_in, sizeof tmp_in, "%s.merge-in.%d.%ld.tmp", out, i, (long)getpid());
            remove_db_files(tmp_in);
            ldm_db *c = NULL;
            if (copy_db(in[i], tmp_in) || !(c = ldm_db_open(tmp_in))) {
                ldm_error_prefix("%s: upgrading a copy from schema version %d", in[i], version[i]);
                remove_db_files(tmp_in);
                goto fail;
            }
            ldm_db_close(c);
            src = tmp_in;
        }
        ldm_merge_stats s;
        int bad = merge_one(h, src, in[i], &s);
        if (src != in[i]) remove_db_files(tmp_in);
        if (bad) goto fail;
        if (per) per[i] = s;
        if (total) {
            total->added += s.added;
            total->present += s.present;
            total->updated += s.updated;
            total->grids += s.grids;
            total->cache += s.cache;
        }
    }
    if (ldm_db_check(db)) goto fail;
    if (exec(h, "PRAGMA journal_mode = DELETE", tmp)) goto fail;
    ldm_db_close(db);
    db = NULL;
    if (fsync_path(tmp, 0)) goto fail;
    if (rename(tmp, out) != 0) {
        ldm_error("%s: cannot rename into place: %s", out, strerror(errno));
        goto fail;
    }
    /* a stale -shm of an older OUT must not describe the new file */
    char shm[4200];
    snprintf(shm, sizeof shm, "%s-shm", out);
    unlink(shm);
    char *dir = ldm_xstrdup(out), *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    fsync_path(slash ? dir : ".", 1);
    free(dir);
    free(version);
    return LDM_OK;
fail:
    rc = ldm_last_status() == LDM_OK ? LDM_RUNTIME : ldm_last_status();
    {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_db_close(db);
        remove_db_files(tmp);
        ldm_error_kind(rc, "%s (%s was not changed)", msg, out);
    }
    free(version);
    return rc;
}
