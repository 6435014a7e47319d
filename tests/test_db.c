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

static ldm_record sample_record(const char *prompt, uint64_t seed) {
    ldm_record r;
    memset(&r, 0, sizeof r);
    r.bundle_hash = "ab12cd34ef";
    r.bundle_path = "/models/x.ldmb";
    r.prompt = prompt;
    r.negative_prompt = "";
    r.seed = seed;
    r.steps = 20;
    r.guidance = 7.5;
    r.scheduler = "pndm";
    r.width = 64;
    r.height = 64;
    r.clip_skip = 1;
    r.backend = "cpu";
    r.output_path = "out.png";
    return r;
}

typedef struct { int n; int64_t ids[64]; char prompts[64][256]; char status[64][16]; uint64_t seeds[64]; } collected;

static int collect(const ldm_record *r, void *ctx) {
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
    CHECK(ldm_db_cache_get(db, "h1", ids, 77, 1, back, 77 * 4) == 0, "miss on empty cache");
    CHECK(ldm_db_cache_put(db, "h1", ids, 77, 1, 4, emb, 1 << 20) == 0, "put: %s", ldm_last_error());
    memset(back, 0, sizeof back);
    CHECK(ldm_db_cache_get(db, "h1", ids, 77, 1, back, 77 * 4) == 1, "hit");
    CHECK(memcmp(back, emb, sizeof emb) == 0, "embedding comes back bit-exact");
    CHECK(ldm_db_cache_get(db, "h1", ids, 77, 2, back, 77 * 4) == 0, "clip skip is part of the key");
    CHECK(ldm_db_cache_get(db, "h2", ids, 77, 1, back, 77 * 4) == 0, "bundle hash is part of the key");
    ids[5] = 320;
    CHECK(ldm_db_cache_get(db, "h1", ids, 77, 1, back, 77 * 4) == 0, "token ids are part of the key");
    ids[5] = 49407;
    float big[77 * 8];
    CHECK(ldm_db_cache_get(db, "h1", ids, 77, 1, big, 77 * 8) == 0, "a stored size that differs is a miss");

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
        CHECK(ldm_db_cache_put(db, "lru", k[e], 77, 1, 4, emb, cap) == 0, "put %d", e);
        usleep(5000);
    }
    CHECK(ldm_db_cache_get(db, "lru", k[0], 77, 1, back, 77 * 4) == 1, "entry 0 present");
    usleep(5000);
    CHECK(ldm_db_cache_put(db, "lru", k[3], 77, 1, 4, emb, cap) == 0, "put 3");
    CHECK(ldm_db_cache_get(db, "lru", k[1], 77, 1, back, 77 * 4) == 0, "least recently used entry 1 evicted");
    CHECK(ldm_db_cache_get(db, "lru", k[0], 77, 1, back, 77 * 4) == 1, "recently used entry 0 kept");
    CHECK(ldm_db_cache_get(db, "lru", k[3], 77, 1, back, 77 * 4) == 1, "new entry 3 kept");
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
        ldm_record r = sample_record(prompts[i], (uint64_t)i == 2 ? UINT64_MAX : (uint64_t)i);
        CHECK(ldm_db_begin(db, &r) == 0 && r.id > 0, "begin %d: %s", i, ldm_last_error());
        ids[i] = r.id;
        r.png_sha256 = "deadbeef";
        r.t_total_ms = 12.5;
        CHECK(ldm_db_finish(db, &r, i == 4 ? "failed" : "ok", i == 4 ? "boom" : NULL) == 0, "finish %d", i);
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
    memset(&c, 0, sizeof c);
    CHECK(ldm_db_get(db, ids[1], collect, &c) == 1 && strcmp(c.prompts[0], prompts[1]) == 0, "get by id");
    CHECK(ldm_db_get(db, 999999, collect, &c) == 0, "get of a missing id");

    int64_t g = ldm_db_new_grid(db, "g=1,7.5 n=10,20", "grid.png");
    CHECK(g > 0, "new grid");
    ldm_record r = sample_record("grid cell", 5);
    r.grid_id = g;
    CHECK(ldm_db_begin(db, &r) == 0, "grid cell begin");
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
        ldm_record r = sample_record("killed", 1);
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
                ldm_record r = sample_record("concurrent", (uint64_t)(k * 1000 + i));
                if (ldm_db_begin(db, &r) != 0 || ldm_db_finish(db, &r, "ok", NULL) != 0) {
                    fprintf(stderr, "child %d: %s\n", k, ldm_last_error());
                    _exit(2);
                }
                int32_t ids[77] = {k, i};
                float emb[77 * 2] = {0};
                if (ldm_db_cache_put(db, "conc", ids, 77, 1, 2, emb, 1 << 20) != 0) {
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

int main(void) {
    snprintf(dir, sizeof dir, "%s/ldm-test-db.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    test_migrations();
    test_cache();
    test_history();
    test_interrupted();
    test_concurrent();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    TEST_END();
}
