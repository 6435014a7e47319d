/* test_db.c - the SQLite store: migrations, the embedding cache with LRU eviction,
 * history records and queries, verbatim storage of awkward prompts, interrupted runs
 * and concurrent writers. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/common.h"
#include "app/db.h"
#include "test.h"

static char dir[256];

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

static ldm_gen_record sample_record(const char *prompt, uint64_t seed) {
    ldm_gen_record r;
    ldm_record_init(&r);
    ldm_record_set(&r.bundle_hash, "ab12cd34ef");
    ldm_record_set(&r.bundle_path, "/models/x.ldmb");
    ldm_record_set(&r.prompt, prompt);
    r.seed = seed;
    r.steps = 20;
    r.guidance = 7.5;
    ldm_record_set(&r.scheduler, "pndm");
    r.width = 64;
    r.height = 64;
    ldm_record_set(&r.backend, "cpu");
    ldm_record_set(&r.output_path, "out.png");
    return r;
}

/* The cache with the CPU backend in fp32, 77 ids. */
static int cache_get(ldm_db *db, const char *hash, const int32_t *ids, int skip, float *out, size_t n) {
    ldm_cache_key k = {hash, "cpu", "fp32", ids, 77, skip};
    return ldm_db_cache_get(db, &k, out, n);
}
static int cache_put(ldm_db *db, const char *hash, const int32_t *ids, int skip, int hidden,
                     const float *emb, size_t cap) {
    ldm_cache_key k = {hash, "cpu", "fp32", ids, 77, skip};
    return ldm_db_cache_put(db, &k, hidden, emb, cap);
}

typedef struct { int n; int64_t ids[64]; char prompts[64][256]; char status[64][16]; uint64_t seeds[64]; } collected;

static int collect(const ldm_gen_record *r, void *ctx) {
    collected *c = ctx;
    if (c->n < 64) {
        c->ids[c->n] = r->id;
        snprintf(c->prompts[c->n], sizeof c->prompts[0], "%s", r->prompt);
        snprintf(c->status[c->n], sizeof c->status[0], "%s", r->status);
        c->seeds[c->n] = r->seed;
    }
    c->n++;
    return 0;
}

static void test_migrations(void) {
    char p[512];
    path_in(p, sizeof p, "sub/dir/m.db");
    ldm_db *db = ldm_db_open(p);
    CHECK(db != NULL, "open creates folders: %s", ldm_last_error());
    if (!db) return;
    ldm_db_close(db);
    db = ldm_db_open(p); /* reopen: nothing to migrate */
    CHECK(db != NULL, "reopen: %s", ldm_last_error());
    ldm_db_close(db);

    sqlite3 *h;
    sqlite3_open(p, &h);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(sqlite3_column_int(st, 0) == ldm_db_schema_version(), "user_version %d", sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
    sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0, "journal mode %s", sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_exec(h, "PRAGMA user_version = 99", NULL, NULL, NULL);
    sqlite3_close(h);
    db = ldm_db_open(p);
    CHECK(db == NULL, "a newer database is refused");
    CHECK(strstr(ldm_last_error(), "newer") && strstr(ldm_last_error(), "99") && strstr(ldm_last_error(), p),
          "message names path and version: %s", ldm_last_error());
    ldm_db_close(db);
}

static void test_cache(void) {
    char p[512];
    path_in(p, sizeof p, "cache.db");
    ldm_db *db = ldm_db_open(p);
    CHECK(db != NULL, "open: %s", ldm_last_error());
    if (!db) return;
    int32_t ids[77];
    float emb[77 * 4], back[77 * 4];
    for (int i = 0; i < 77; i++) ids[i] = 49406 + (i > 3);
    for (int i = 0; i < 77 * 4; i++) emb[i] = (float)i * 0.25f - 3.0f;
    CHECK(cache_get(db, "h1", ids, 1, back, 77 * 4) == 0, "miss on empty cache");
    CHECK(cache_put(db, "h1", ids, 1, 4, emb, 1 << 20) == 0, "put: %s", ldm_last_error());
    memset(back, 0, sizeof back);
    CHECK(cache_get(db, "h1", ids, 1, back, 77 * 4) == 1, "hit");
    CHECK(memcmp(back, emb, sizeof emb) == 0, "embedding comes back bit-exact");
    CHECK(cache_get(db, "h1", ids, 2, back, 77 * 4) == 0, "clip skip is part of the key");
    CHECK(cache_get(db, "h2", ids, 1, back, 77 * 4) == 0, "bundle hash is part of the key");
    ldm_cache_key kg = {"h1", "cuda", "fp32", ids, 77, 1}, kp = {"h1", "cpu", "bf16", ids, 77, 1};
    CHECK(ldm_db_cache_get(db, &kg, back, 77 * 4) == 0, "backend is part of the key (a GPU embedding is not the CPU's)");
    CHECK(ldm_db_cache_get(db, &kp, back, 77 * 4) == 0, "precision is part of the key");
    ids[5] = 320;
    CHECK(cache_get(db, "h1", ids, 1, back, 77 * 4) == 0, "token ids are part of the key");
    ids[5] = 49407;
    float big[77 * 8];
    CHECK(cache_get(db, "h1", ids, 1, big, 77 * 8) == 0, "a stored size that differs is a miss");

    /* LRU: cap of 3 entries; touching the first keeps it, the second goes. */
    size_t one = sizeof emb, cap = 3 * one;
    int32_t k[5][77];
    for (int e = 0; e < 5; e++) {
        for (int i = 0; i < 77; i++) k[e][i] = 1000 + e;
    }
    sqlite3 *h;
    sqlite3_open(p, &h);
    sqlite3_exec(h, "DELETE FROM embedding_cache", NULL, NULL, NULL);
    sqlite3_close(h);
    for (int e = 0; e < 3; e++) {
        CHECK(cache_put(db, "lru", k[e], 1, 4, emb, cap) == 0, "put %d", e);
        usleep(5000);
    }
    CHECK(cache_get(db, "lru", k[0], 1, back, 77 * 4) == 1, "entry 0 present");
    usleep(5000);
    CHECK(cache_put(db, "lru", k[3], 1, 4, emb, cap) == 0, "put 3");
    CHECK(cache_get(db, "lru", k[1], 1, back, 77 * 4) == 0, "least recently used entry 1 evicted");
    CHECK(cache_get(db, "lru", k[0], 1, back, 77 * 4) == 1, "recently used entry 0 kept");
    CHECK(cache_get(db, "lru", k[3], 1, back, 77 * 4) == 1, "new entry 3 kept");
    int64_t bytes = 0, entries = 0;
    CHECK(ldm_db_cache_stats(db, &bytes, &entries) == 0 && entries == 3 && bytes == (int64_t)cap,
          "cache holds 3 entries, %lld bytes (got %lld, %lld)", (long long)cap, (long long)entries, (long long)bytes);
    ldm_db_close(db);
}

static void test_history(void) {
    char p[512];
    path_in(p, sizeof p, "hist.db");
    ldm_db *db = ldm_db_open(p);
    CHECK(db != NULL, "open: %s", ldm_last_error());
    if (!db) return;
    const char *prompts[] = {
        "a red apple",
        "it's \"quoted\" and 'single'",
        "100% sure; DROP TABLE generations; --",
        "unicode: caf\xc3\xa9 \xe7\x8c\xab \xf0\x9f\x8d\x8e",
        "\x01\x02 binary-looking \x7f text",
        "",
    };
    int n = (int)(sizeof prompts / sizeof *prompts);
    int64_t ids[8];
    for (int i = 0; i < n; i++) {
        ldm_gen_record r = sample_record(prompts[i], (uint64_t)i == 2 ? UINT64_MAX : (uint64_t)i);
        CHECK(ldm_db_begin(db, &r) == 0 && r.id > 0, "begin %d: %s", i, ldm_last_error());
        ids[i] = r.id;
        ldm_record_set(&r.png_sha256, "deadbeef");
        r.t_total_ms = 12.5;
        CHECK(ldm_db_finish(db, &r, i == 4 ? "failed" : "ok", i == 4 ? "boom" : NULL) == 0, "finish %d", i);
        ldm_record_free(&r);
    }
    collected c = {0};
    ldm_history_filter f = {0};
    CHECK(ldm_db_query(db, &f, collect, &c) == 0, "query all: %s", ldm_last_error());
    CHECK(c.n == n, "all %d rows, got %d", n, c.n);
    CHECK(c.n > 0 && c.ids[0] == ids[n - 1], "newest first");
    for (int i = 0; i < n && i < c.n; i++)
        CHECK(strcmp(c.prompts[n - 1 - i], prompts[i]) == 0, "prompt %d stored verbatim", i);

    memset(&c, 0, sizeof c);
    f.grep = "apple";
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 1 && strcmp(c.prompts[0], "a red apple") == 0, "grep apple finds 1, got %d", c.n);
    memset(&c, 0, sizeof c);
    f.grep = "DROP TABLE";
    CHECK(ldm_db_query(db, &f, collect, &c) == 0 && c.n == 1, "grep with SQL words is safe, got %d", c.n);
    memset(&c, 0, sizeof c);
    f.grep = "\"quoted\"";
    CHECK(ldm_db_query(db, &f, collect, &c) == 0 && c.n == 1, "grep with quotes, got %d: %s", c.n, ldm_last_error());
    memset(&c, 0, sizeof c);
    f.grep = "caf\xc3\xa9";
    CHECK(ldm_db_query(db, &f, collect, &c) == 0 && c.n == 1, "grep unicode, got %d", c.n);
    memset(&c, 0, sizeof c);
    f.grep = "app";
    CHECK(ldm_db_query(db, &f, collect, &c) == 0 && c.n == 1, "grep is a prefix match, got %d", c.n);

    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    f.has_seed = 1;
    f.seed = UINT64_MAX;
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 1 && c.seeds[0] == UINT64_MAX, "seed 2^64-1 round trips and filters");
    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    f.status = "failed";
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 1, "status filter");
    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    f.limit = 2;
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 2, "limit");
    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    f.since = "2000-01-01";
    f.until = "2999-01-01";
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == n, "since/until range");
    memset(&c, 0, sizeof c);
    f.since = "2999-01-01";
    f.until = NULL;
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 0, "since in the future");
    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    f.bundle = "ab12";
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == n, "bundle hash prefix");
    ldm_gen_record got;
    CHECK(ldm_db_get(db, ids[1], &got) == 1 && strcmp(got.prompt, prompts[1]) == 0, "get by id");
    ldm_record_free(&got);
    CHECK(ldm_db_get(db, 999999, &got) == 0, "get of a missing id");

    int64_t g = ldm_db_new_grid(db, "g=1,7.5 n=10,20", "grid.png");
    CHECK(g > 0, "new grid");
    ldm_gen_record r = sample_record("grid cell", 5);
    r.grid_id = g;
    CHECK(ldm_db_begin(db, &r) == 0, "grid cell begin");
    ldm_record_free(&r);
    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    f.grid_id = g;
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 1, "grid filter");
    ldm_db_close(db);
}

/* A child that begins a run and dies without finishing: reaped as interrupted. */
static void test_interrupted(void) {
    char p[512];
    path_in(p, sizeof p, "kill.db");
    pid_t pid = fork();
    if (pid == 0) {
        ldm_db *db = ldm_db_open(p);
        ldm_gen_record r = sample_record("killed", 1);
        if (!db || ldm_db_begin(db, &r) != 0) _exit(1);
        _exit(0); /* no finish */
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child recorded its run");
    ldm_db *db = ldm_db_open(p);
    CHECK(db != NULL, "open");
    if (!db) return;
    CHECK(ldm_db_reap_interrupted(db) == 1, "one dead run reaped");
    collected c = {0};
    ldm_history_filter f = {0};
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == 1 && strcmp(c.status[0], "interrupted") == 0, "shown as interrupted: %s", c.n ? c.status[0] : "-");
    ldm_db_close(db);
}

/* 8 processes writing history and cache at once: every row is there. */
static void test_concurrent(void) {
    char p[512];
    path_in(p, sizeof p, "conc.db");
    enum { PROCS = 8, RUNS = 25 };
    pid_t kids[PROCS];
    for (int k = 0; k < PROCS; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            ldm_db *db = ldm_db_open(p);
            if (!db) { fprintf(stderr, "child %d: %s\n", k, ldm_last_error()); _exit(1); }
            for (int i = 0; i < RUNS; i++) {
                ldm_gen_record r = sample_record("concurrent", (uint64_t)(k * 1000 + i));
                if (ldm_db_begin(db, &r) != 0 || ldm_db_finish(db, &r, "ok", NULL) != 0) {
                    fprintf(stderr, "child %d: %s\n", k, ldm_last_error());
                    _exit(2);
                }
                ldm_record_free(&r);
                int32_t ids[77] = {k, i};
                float emb[77 * 2] = {0};
                if (cache_put(db, "conc", ids, 1, 2, emb, 1 << 20) != 0) {
                    fprintf(stderr, "child %d: %s\n", k, ldm_last_error());
                    _exit(3);
                }
            }
            ldm_db_close(db);
            _exit(0);
        }
    }
    int all_ok = 1;
    for (int k = 0; k < PROCS; k++) {
        int status;
        waitpid(kids[k], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) all_ok = 0;
    }
    CHECK(all_ok, "all writers succeeded (no 'database is locked')");
    ldm_db *db = ldm_db_open(p);
    if (!db) return;
    collected c = {0};
    ldm_history_filter f = {0};
    ldm_db_query(db, &f, collect, &c);
    CHECK(c.n == PROCS * RUNS, "every row present: %d of %d", c.n, PROCS * RUNS);
    ldm_db_close(db);
}

/* Seeds sort and compare numerically in SQL, exactly up to 2^64-1 (schema 003). */
static void test_seed_sql(void) {
    char p[512];
    path_in(p, sizeof p, "seeds.db");
    ldm_db *db = ldm_db_open(p);
    CHECK(db != NULL, "open: %s", ldm_last_error());
    if (!db) return;
    const uint64_t seeds[] = {100, 9, UINT64_MAX, 42, 9223372036854775807ull, 9223372036854775808ull,
                              10000000000000000000ull, 0};
    const int n = (int)(sizeof seeds / sizeof seeds[0]);
    for (int i = 0; i < n; i++) {
        ldm_gen_record r = sample_record("s", seeds[i]);
        CHECK(ldm_db_begin(db, &r) == 0, "begin: %s", ldm_last_error());
        ldm_record_free(&r);
    }
    ldm_db_close(db);
    sqlite3 *h;
    sqlite3_open(p, &h);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(h, "SELECT seed FROM generations ORDER BY seed", -1, &st, NULL);
    const char *want[] = {"0", "9", "42", "100", "9223372036854775807", "09223372036854775808",
                          "10000000000000000000", "18446744073709551615"};
    int k = 0, ok = 1;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (k >= n || !v || strcmp(v, want[k])) ok = 0;
        k++;
    }
    sqlite3_finalize(st);
    CHECK(ok && k == n, "ORDER BY seed is numeric (%d rows)", k);
    sqlite3_prepare_v2(h, "SELECT COUNT(*) FROM generations WHERE seed > 100", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(sqlite3_column_int(st, 0) == 4, "seed > 100: %d rows, want 4", sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
    sqlite3_prepare_v2(h, "SELECT COUNT(*) FROM generations WHERE seed = 42", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(sqlite3_column_int(st, 0) == 1, "seed = 42");
    sqlite3_finalize(st);
    sqlite3_close(h);
    db = ldm_db_open(p);
    collected c = {0};
    ldm_history_filter f = {0};
    f.has_seed = 1;
    f.seed = 9223372036854775808ull;
    CHECK(db && ldm_db_query(db, &f, collect, &c) == 0 && c.n == 1 && c.seeds[0] == f.seed,
          "seed 2^63 filters and reads back");
    ldm_db_close(db);
}

/* Every field of a record survives the row: begin + finish, then get. */
static void test_record_row(void) {
    char p[512];
    path_in(p, sizeof p, "rec.db");
    ldm_db *db = ldm_db_open(p);
    if (!db) { CHECK(0, "open"); return; }
    ldm_gen_record r = sample_record("a \"quoted\" prompt\nwith a newline \xe7\x8c\xab", UINT64_MAX - 1);
    ldm_record_set(&r.negative_prompt, "'; DROP TABLE x; --");
    r.karras = 1;
    r.eta = 0.25;
    ldm_record_set(&r.timestep_spacing, "trailing");
    r.clip_skip = 2;
    r.batch_size = 3;
    r.batch_index = 2;
    r.t_text_ms = 1.5;
    r.t_sampling_ms = 2.25;
    r.t_decode_ms = 3.125;
    r.t_total_ms = 7;
    CHECK(ldm_db_begin(db, &r) == 0, "begin: %s", ldm_last_error());
    ldm_record_set(&r.png_sha256, "0011");
    CHECK(ldm_db_finish(db, &r, "ok", NULL) == 0, "finish: %s", ldm_last_error());
    ldm_gen_record g;
    CHECK(ldm_db_get(db, r.id, &g) == 1, "get");
    int same = 1;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *fl = &ldm_record_fields[i];
        if (!(fl->views & LDM_V_H) || (fl->views & LDM_V_R)) continue;
        const char *a = (const char *)&r + fl->offset, *b = (const char *)&g + fl->offset;
        int eq;
        if (fl->type == LDM_FT_STR || fl->type == LDM_FT_OSTR) {
            const char *x = *(char *const *)a, *y = *(char *const *)b;
            eq = (!x && !y) || (x && y && !strcmp(x, y));
        } else if (fl->type == LDM_FT_DBL) {
            eq = *(const double *)a == *(const double *)b;
        } else if (fl->type == LDM_FT_U64 || fl->type == LDM_FT_ID) {
            eq = !memcmp(a, b, 8);
        } else {
            eq = *(const int *)a == *(const int *)b;
        }
        if (!eq) { same = 0; printf("field %s differs after the row\n", fl->name); }
    }
    CHECK(same, "params -> row -> params identical for every history field");
    CHECK(g.finished_at && g.created_at[0], "database times set");
    ldm_record_free(&g);
    ldm_record_free(&r);
    ldm_db_close(db);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/ldm-test-db.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    test_migrations();
    test_cache();
    test_history();
    test_interrupted();
    test_concurrent();
    test_seed_sql();
    test_record_row();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    TEST_END();
}
