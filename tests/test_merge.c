/* test_merge.c - ldm_db_merge: every field kept, grids and replay links remapped, the
 * same input twice adds nothing (uuid), running rows updated once finished, embedding
 * caches merged, full-text search on the result; newer, non-database, damaged inputs
 * refused with OUT untouched; a schema 3 input upgraded in a copy (its uuids derived,
 * so merging it twice adds nothing either); the result passes the checks. */
#include <dirent.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/db.h"
#include "app/merge.h"
#include "core/common.h"
#include "test.h"

static char dir[256];

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

static ldm_gen_record rec(const char *prompt, uint64_t seed) {
    ldm_gen_record r;
    ldm_record_init(&r);
    ldm_record_set(&r.bundle_hash, "ab12cd34ef");
    ldm_record_set(&r.bundle_path, "/models/x.ldmb");
    ldm_record_set(&r.prompt, prompt);
    ldm_record_set(&r.negative_prompt, "blurry");
    r.seed = seed;
    r.steps = 20;
    r.guidance = 7.5;
    ldm_record_set(&r.scheduler, "pndm");
    r.width = 64;
    r.height = 64;
    ldm_record_set(&r.backend, "cpu");
    ldm_record_set(&r.output_path, "/out/x.png");
    ldm_record_set(&r.png_sha256, "00ff");
    ldm_record_set(&r.prompt_file, "/p/prompts.txt");
    r.prompt_line = 3;
    r.t_total_ms = 12.5;
    return r;
}

/* one finished row; returns its id */
static int64_t add(ldm_db *db, const char *prompt, uint64_t seed, int64_t grid, int64_t replay_of, const char *status) {
    ldm_gen_record r = rec(prompt, seed);
    r.grid_id = grid;
    r.replay_of = replay_of;
    int64_t id = 0;
    if (ldm_db_begin(db, &r) == 0) {
        id = r.id;
        if (status) ldm_db_finish(db, &r, status, !strcmp(status, "failed") ? "it broke" : NULL);
    }
    ldm_record_free(&r);
    return id;
}

static int64_t count(const char *path, const char *sql) {
    sqlite3 *h;
    int64_t v = -1;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        else
            printf("  sql failed: %s: %s\n", sql, sqlite3_errmsg(h));
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return v;
}

static void exec_on(const char *path, const char *sql) {
    sqlite3 *h;
    sqlite3_open(path, &h);
    char *msg = NULL;
    if (sqlite3_exec(h, sql, NULL, NULL, &msg) != SQLITE_OK) printf("  exec failed: %s\n", msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(h);
}

static char *file_bytes(const char *path, size_t *n) { return ldm_read_file(path, n); }

static int same_file(const char *path, const char *bytes, size_t n) {
    size_t m;
    char *b = ldm_read_file(path, &m);
    int same = b && m == n && !memcmp(b, bytes, n);
    free(b);
    return same;
}

/* records by uuid, to compare every field */
typedef struct { int n; ldm_gen_record r[16]; } recs;
static int collect(const ldm_gen_record *r, void *ctx) {
    recs *c = ctx;
    if (c->n < 16) ldm_record_copy(&c->r[c->n++], r);
    return 0;
}
static void load(const char *path, recs *c) {
    memset(c, 0, sizeof *c);
    ldm_db *db = ldm_db_open(path);
    ldm_history_filter f = {0};
    if (db) ldm_db_query(db, &f, collect, c);
    ldm_db_close(db);
}
static void free_recs(recs *c) {
    for (int i = 0; i < c->n; i++) ldm_record_free(&c->r[i]);
}
static const ldm_gen_record *by_uuid(const recs *c, const char *u) {
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->r[i].uuid, u)) return &c->r[i];
    return NULL;
}
static const ldm_gen_record *by_id(const recs *c, int64_t id) {
    for (int i = 0; i < c->n; i++)
        if (c->r[i].id == id) return &c->r[i];
    return NULL;
}
/* every field but the ids equal */
static int same_fields(const ldm_gen_record *a, const ldm_gen_record *b) {
    ldm_gen_record x, y;
    ldm_record_copy(&x, a);
    ldm_record_copy(&y, b);
    x.id = y.id = x.grid_id = y.grid_id = x.replay_of = y.replay_of = 0;
    char *ja = ldm_record_json(&x), *jb = ldm_record_json(&y);
    int same = !strcmp(ja, jb);
    if (!same) printf("  %s\n  %s\n", ja, jb);
    free(ja); free(jb);
    ldm_record_free(&x);
    ldm_record_free(&y);
    return same;
}

static int no_temp_files(void) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int ok = 1;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp")) { printf("  left behind: %s\n", e->d_name); ok = 0; }
    if (d) closedir(d);
    return ok;
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/ldm_test_merge.XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char a[512], b[512], out[512], o2[512];
    path_in(a, sizeof a, "a.db");
    path_in(b, sizeof b, "b.db");
    path_in(out, sizeof out, "out.db");
    path_in(o2, sizeof o2, "out2.db");

    /* a: a grid of two cells and a failed run; b: a run and its replay, a running run */
    ldm_db *da = ldm_db_open(a), *db = ldm_db_open(b);
    CHECK(da && db, "open: %s", ldm_last_error());
    if (!da || !db) TEST_END();
    int64_t g = ldm_db_new_grid(da, "g=1,7.5 n=2", "/out/grid.png");
    add(da, "grid apple", 1, g, 0, "ok");
    add(da, "grid apple", 1, g, 0, "ok");
    add(da, "failed pear", 2, 0, 0, "failed");
    int64_t orig = add(db, "original plum", 3, 0, 0, "ok");
    add(db, "unrelated", 4, 0, 0, "ok");
    int64_t rp = add(db, "original plum", 3, 0, orig, "ok");
    int64_t running = add(db, "still running", 5, 0, 0, NULL);
    CHECK(orig > 0 && rp > 0 && running > 0, "rows made");
    int32_t ids[77] = {1, 2, 3};
    float emb[77 * 4] = {0.5f};
    ldm_cache_key k1 = {"ab12cd34ef", "cpu", "fp32", ids, 77, 1}, k2 = {"ab12cd34ef", "cpu", "fp32", ids, 77, 2};
    ldm_db_cache_put(da, &k1, 4, emb, 1 << 20);
    ldm_db_cache_put(db, &k1, 4, emb, 1 << 20);
    ldm_db_cache_put(db, &k2, 4, emb, 1 << 20);
    ldm_db_close(da);
    /* db stays open: a shard still running while its database is merged */

    const char *in[] = {a, b};
    ldm_merge_stats per[2], tot;
    ldm_status st = ldm_db_merge(out, in, 2, per, &tot);
    CHECK(st == LDM_OK, "merge: %s", ldm_last_error());
    CHECK(tot.added == 7 && per[0].added == 3 && per[1].added == 4 && tot.present == 0, "7 added (%lld)",
          (long long)tot.added);
    CHECK(per[0].grids == 1 && per[1].grids == 0, "one grid");
    CHECK(per[0].cache == 1 && per[1].cache == 1 && count(out, "SELECT count(*) FROM embedding_cache") == 2,
          "caches merged: 2 entries");
    CHECK(count(out, "SELECT count(*) FROM generations") == 7, "7 rows");
    CHECK(count(out, "SELECT count(DISTINCT grid_id) FROM generations WHERE grid_id IS NOT NULL") == 1 &&
          count(out, "SELECT count(*) FROM generations g JOIN grids r ON r.id = g.grid_id WHERE r.spec = 'g=1,7.5 n=2'") == 2,
          "the grid's cells share the new grid");
    CHECK(count(out, "PRAGMA journal_mode") >= 0, "readable");
    CHECK(no_temp_files(), "no temporary files left");
    recs ra, rb, ro;
    load(a, &ra);
    load(b, &rb);
    load(out, &ro);
    int all_same = ro.n == 7;
    for (int i = 0; i < ra.n; i++) {
        const ldm_gen_record *m = by_uuid(&ro, ra.r[i].uuid);
        all_same &= m && same_fields(&ra.r[i], m);
    }
    for (int i = 0; i < rb.n; i++) {
        const ldm_gen_record *m = by_uuid(&ro, rb.r[i].uuid);
        all_same &= m && same_fields(&rb.r[i], m);
    }
    CHECK(all_same, "every field of every generation kept (uuid, times, pid, host, timings, paths, ...)");
    /* the replay link: to the new id of the original */
    const ldm_gen_record *brp = by_id(&rb, rp), *borig = by_id(&rb, orig);
    const ldm_gen_record *orp = brp ? by_uuid(&ro, brp->uuid) : NULL, *oorig = borig ? by_uuid(&ro, borig->uuid) : NULL;
    CHECK(orp && oorig && orp->replay_of == oorig->id && oorig->id != orig, "replay_of remapped (%lld -> %lld)",
          orp ? (long long)orp->replay_of : -1LL, oorig ? (long long)oorig->id : -1LL);
    CHECK(strlen(ra.r[0].uuid) == 36 && ra.r[0].uuid[14] == '4', "uuids are version 4: %s", ra.r[0].uuid);
    free_recs(&ra);
    free_recs(&ro);
    /* full-text search on the result */
    CHECK(count(out, "SELECT count(*) FROM generations_fts WHERE generations_fts MATCH 'plum'") == 2, "FTS finds the merged rows");
    ldm_db *dout = ldm_db_open(out);
    CHECK(dout && ldm_db_check(dout) == 0, "the result passes history --check: %s", ldm_last_error());
    ldm_db_close(dout);
    CHECK(count(out, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") == 1, "integrity_check ok");

    /* the same inputs again, and OUT into itself: nothing added */
    size_t n_before;
    char *before = file_bytes(out, &n_before);
    st = ldm_db_merge(out, in, 2, per, &tot);
    CHECK(st == LDM_OK && tot.added == 0 && tot.present == 7 && tot.grids == 0 && tot.cache == 0,
          "merged twice: nothing added (%lld, %lld present)", (long long)tot.added, (long long)tot.present);
    CHECK(count(out, "SELECT count(*) FROM generations") == 7 && count(out, "SELECT count(*) FROM grids") == 1,
          "still 7 rows and 1 grid");
    const char *self[] = {out};
    st = ldm_db_merge(out, self, 1, NULL, &tot);
    CHECK(st == LDM_OK && tot.added == 0, "OUT into itself: nothing added");
    free(before);

    /* the running run finishes; merged again, OUT's row becomes ok */
    ldm_gen_record r;
    CHECK(ldm_db_get(db, running, &r) == 1, "get running");
    ldm_db_finish(db, &r, "ok", NULL);
    ldm_record_free(&r);
    ldm_db_close(db);
    const char *only_b[] = {b};
    st = ldm_db_merge(out, only_b, 1, per, &tot);
    CHECK(st == LDM_OK && tot.added == 0 && tot.updated == 1, "a run finished since: updated (%lld)", (long long)tot.updated);
    CHECK(count(out, "SELECT count(*) FROM generations WHERE status = 'running'") == 0 &&
          count(out, "SELECT count(*) FROM generations WHERE prompt = 'still running' AND status = 'ok'") == 1,
          "now ok");
    st = ldm_db_merge(out, only_b, 1, per, &tot);
    CHECK(st == LDM_OK && tot.updated == 0, "and only once");
    /* merge of merges: OUT into another database with a's rows already */
    const char *only_a[] = {a};
    CHECK(ldm_db_merge(o2, only_a, 1, NULL, &tot) == LDM_OK && tot.added == 3, "a into out2");
    CHECK(ldm_db_merge(o2, self, 1, NULL, &tot) == LDM_OK && tot.added == 4 && tot.present == 3,
          "out into out2: only b's rows are new (%lld)", (long long)tot.added);
    CHECK(count(o2, "SELECT count(*) FROM generations") == 7 && count(o2, "SELECT count(*) FROM grids") == 1, "7 rows, 1 grid");

    /* refused inputs: OUT untouched, nothing left behind */
    before = file_bytes(out, &n_before);
    char nw[512], txt[512], empty[512], bad[512], none[512], dirp[512];
    path_in(nw, sizeof nw, "newer.db");
    path_in(txt, sizeof txt, "text.db");
    path_in(empty, sizeof empty, "empty.db");
    path_in(bad, sizeof bad, "damaged.db");
    path_in(none, sizeof none, "none.db");
    path_in(dirp, sizeof dirp, "adir");
    mkdir(dirp, 0755);
    size_t na;
    char *abytes = file_bytes(a, &na);
    FILE *f = fopen(nw, "wb"); fwrite(abytes, 1, na, f); fclose(f);
    exec_on(nw, "PRAGMA user_version = 99");
    f = fopen(txt, "wb"); fputs("this is not a database, just text that is long enough\n", f); fclose(f);
    f = fopen(empty, "wb"); fclose(f);
    /* damage every page after the first */
    f = fopen(bad, "wb");
    fwrite(abytes, 1, na, f);
    for (size_t off = 4096; off + 200 < na; off += 4096) {
        fseek(f, (long)off, SEEK_SET);   /* the page header: type, free block, cell count */
        fwrite("garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage", 1, 80, f);
    }
    fclose(f);
    struct { const char *path, *want; } refused[] = {
        {nw, "newer"}, {txt, "not an SQLite database"}, {empty, "empty file"}, {bad, "damaged"},
        {none, "none.db"}, {dirp, "not a file"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        const char *two[] = {a, refused[i].path};
        st = ldm_db_merge(out, two, 2, NULL, NULL);
        CHECK(st != LDM_OK && strstr(ldm_last_error(), refused[i].want), "%s refused: %s", refused[i].path,
              ldm_last_error());
        CHECK(same_file(out, before, n_before), "%s: OUT untouched", refused[i].path);
    }
    char fresh[512];
    path_in(fresh, sizeof fresh, "fresh.db");
    const char *nw1[] = {nw};
    CHECK(ldm_db_merge(fresh, nw1, 1, NULL, NULL) == LDM_DATA && access(fresh, F_OK) != 0,
          "a refused merge into a new OUT creates nothing");
    const char *intotext[] = {a};
    CHECK(ldm_db_merge(txt, intotext, 1, NULL, NULL) == LDM_DATA && strstr(ldm_last_error(), "not an SQLite"),
          "merging into a file that is not a database is refused");
    CHECK(ldm_db_merge(out, NULL, 0, NULL, NULL) == LDM_USAGE, "no input: usage");
    CHECK(no_temp_files(), "no temporary files left after refusals");
    free(before);
    free(abytes);

    /* a schema 3 database (before uuids): upgraded in a copy, merged twice adds it once */
    char old[512];
    path_in(old, sizeof old, "v3.db");
    sqlite3 *h;
    sqlite3_open(old, &h);
    const char *files[] = {"schema/001_init.sql", "schema/002_batch_replay.sql", "schema/003_seed_and_cache_key.sql"};
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        char *sql = ldm_read_file(files[i], NULL);
        ok &= sql && sqlite3_exec(h, sql, NULL, NULL, NULL) == SQLITE_OK;
        free(sql);
    }
    ok &= sqlite3_exec(h, "PRAGMA user_version = 3; INSERT INTO generations(status, bundle_hash, bundle_path, prompt, "
                       "seed, steps, guidance, scheduler, width, height, backend, ldm_version, pid, host) VALUES "
                       "('ok', 'h', '/b', 'old row', 9, 5, 7.5, 'pndm', 64, 64, 'cpu', '0.1.0', 1, 'old-host')",
                       NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_close(h);
    CHECK(ok, "schema 3 database made");
    const char *v3[] = {old};
    st = ldm_db_merge(out, v3, 1, NULL, &tot);
    CHECK(st == LDM_OK && tot.added == 1, "schema 3 input merged: %s", ldm_last_error());
    st = ldm_db_merge(out, v3, 1, NULL, &tot);
    CHECK(st == LDM_OK && tot.added == 0 && tot.present == 1, "schema 3 input merged twice: once (%lld)", (long long)tot.added);
    CHECK(count(old, "PRAGMA user_version") == 3, "the input was not upgraded in place");
    CHECK(count(out, "SELECT count(*) FROM generations WHERE prompt = 'old row' AND uuid LIKE '________-____-8___-____-____________'") == 1,
          "its uuid is derived (version 8)");
    /* upgrading it in place gives the same uuid */
    ldm_db *up = ldm_db_open(old);
    ldm_db_close(up);
    st = ldm_db_merge(out, v3, 1, NULL, &tot);
    CHECK(st == LDM_OK && tot.added == 0, "upgraded in place: the same uuid, still nothing added");
    CHECK(no_temp_files(), "no temporary files left");
    dout = ldm_db_open(out);
    CHECK(dout && ldm_db_check(dout) == 0, "final check");
    ldm_db_close(dout);
    free_recs(&rb);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    TEST_END();
}
