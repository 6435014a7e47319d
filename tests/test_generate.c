/* test_generate.c - ldmgen's store seen from outside: a schema-1 database migrated with
 * its rows, the "ldm" PNG chunk (round trip and refusals), awkward prompts through the
 * real ldmgen (stored, found by --grep, printed as JSON and written in the PNG chunks
 * verbatim), and replay reporting a difference.  Runs LDM_BUILD/ldmgen (default build/)
 * on a bundle packed from tests/fixtures/models/sd1. */
#include <fcntl.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/common.h"
#include "app/db.h"
#include "app/record.h"
#include "format/png_io.h"
#include "test.h"

extern const char *const ldm_schema_migrations[];
extern const int ldm_schema_migration_count;

static char dir[256], gen[512], pack[512], bundle[512], dbp[512];

/* Run argv (NULL-terminated) with stdout/stderr to files (NULL: /dev/null); exit status. */
static int run(char *const argv[], const char *out, const char *err) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

/* ---- a database made by schema version 1 is migrated, keeping its rows ---- */
static void test_migrate_v1(void) {
    char p[512];
    path_in(p, sizeof p, "v1.db");
    sqlite3 *h;
    CHECK(sqlite3_open(p, &h) == SQLITE_OK, "create v1 db");
    CHECK(sqlite3_exec(h, ldm_schema_migrations[0], NULL, NULL, NULL) == SQLITE_OK,
          "apply 001: %s", sqlite3_errmsg(h));
    sqlite3_exec(h, "PRAGMA user_version = 1", NULL, NULL, NULL);
    CHECK(sqlite3_exec(h,
        "INSERT INTO grids(id, spec, output_path) VALUES (3, 'g=1,2 n=5', '/g.png');"
        "INSERT INTO generations(id, grid_id, status, bundle_hash, bundle_path, prompt, seed, steps,"
        " guidance, scheduler, width, height, backend, ldm_version, png_sha256)"
        " VALUES (7, 3, 'ok', 'abc', '/m.ldmb', 'an old lighthouse', '18446744073709551615', 20, 7.5,"
        " 'pndm', 512, 512, 'cpu', '0.0.9', 'ff00');"
        "INSERT INTO embedding_cache(bundle_hash, token_ids, clip_skip, hidden, embedding, bytes,"
        " last_used) VALUES ('abc', x'01000000', 1, 1, x'0000803f', 4, 2460000.5);",
        NULL, NULL, NULL) == SQLITE_OK, "v1 rows: %s", sqlite3_errmsg(h));
    sqlite3_close(h);

    ldm_db *db = ldm_db_open(p);
    CHECK(db != NULL, "v1 database opens: %s", ldm_last_error());
    if (!db) return;
    sqlite3_open(p, &h);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(sqlite3_column_int(st, 0) == ldm_db_schema_version() && ldm_db_schema_version() >= 2,
          "migrated to version %d (got %d)", ldm_db_schema_version(), sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
    /* migration 003 re-keys the cache by backend and precision: old entries are dropped
     * (a cache, not history) */
    sqlite3_prepare_v2(h, "SELECT COUNT(*) FROM embedding_cache", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(sqlite3_column_int(st, 0) == 0, "old cache entries dropped by the re-keying");
    sqlite3_finalize(st);
    sqlite3_prepare_v2(h, "SELECT typeof(seed) FROM generations WHERE id = 7", -1, &st, NULL);
    sqlite3_step(st);
    CHECK(!strcmp((const char *)sqlite3_column_text(st, 0), "text"), "seed 2^64-1 stays text after 003");
    sqlite3_finalize(st);
    sqlite3_close(h);
    ldm_db_close(db);   /* its rows: test_migrated_rows */
}

/* Collected rows of a query. */
typedef struct {
    int n;
    int64_t id, grid_id, replay_of;
    int batch_size, batch_index;
    uint64_t seed;
    char prompt[4096], negative[4096], status[16], sha[80];
} one_row;

static int take_row(const ldm_gen_record *r, void *ctx) {
    one_row *o = ctx;
    if (o->n++ == 0) {
        o->id = r->id;
        o->grid_id = r->grid_id;
        o->replay_of = r->replay_of;
        o->batch_size = r->batch_size;
        o->batch_index = r->batch_index;
        o->seed = r->seed;
        snprintf(o->prompt, sizeof o->prompt, "%s", r->prompt ? r->prompt : "");
        snprintf(o->negative, sizeof o->negative, "%s", r->negative_prompt ? r->negative_prompt : "");
        snprintf(o->status, sizeof o->status, "%s", r->status);
        snprintf(o->sha, sizeof o->sha, "%s", r->png_sha256 ? r->png_sha256 : "");
    }
    return 0;
}

static void test_migrated_rows(void) {
    char p[512];
    path_in(p, sizeof p, "v1.db");
    ldm_db *db = ldm_db_open(p);
    if (!db) return;
    one_row o;
    memset(&o, 0, sizeof o);
    ldm_gen_record got;
    CHECK(ldm_db_get(db, 7, &got) == 1, "old row 7 still there");
    take_row(&got, &o);
    ldm_record_free(&got);
    CHECK(!strcmp(o.prompt, "an old lighthouse") && o.seed == UINT64_MAX && !strcmp(o.status, "ok") &&
          o.grid_id == 3 && !strcmp(o.sha, "ff00"), "old row kept its values");
    CHECK(o.batch_size == 1 && o.batch_index == 0 && o.replay_of == 0,
          "new columns read as a single image (%d, %d, %lld)", o.batch_size, o.batch_index, (long long)o.replay_of);
    ldm_history_filter f;
    memset(&f, 0, sizeof f);
    f.grep = "lighthouse";
    memset(&o, 0, sizeof o);
    CHECK(ldm_db_query(db, &f, take_row, &o) == 0 && o.n == 1 && o.id == 7, "full-text index kept");
    /* a new row after the migration */
    ldm_gen_record r;
    ldm_record_init(&r);
    ldm_record_set(&r.bundle_hash, "abc"); ldm_record_set(&r.bundle_path, "/m.ldmb");
    ldm_record_set(&r.prompt, "new"); ldm_record_set(&r.scheduler, "pndm");
    ldm_record_set(&r.backend, "cpu"); r.steps = 1; r.width = r.height = 64; r.batch_size = 4;
    r.batch_index = 3; r.replay_of = 7;
    CHECK(ldm_db_begin(db, &r) == 0, "insert after migration: %s", ldm_last_error());
    memset(&o, 0, sizeof o);
    CHECK(ldm_db_get(db, r.id, &got) == 1, "new row");
    take_row(&got, &o);
    ldm_record_free(&got);
    ldm_record_free(&r);
    CHECK(o.batch_size == 4 && o.batch_index == 3 && o.replay_of == 7, "batch and replay columns stored");
    CHECK(ldm_db_check(db) == 0, "integrity: %s", ldm_last_error());
    ldm_db_close(db);
}

/* ---- the "ldm" chunk: params -> chunk -> params for every field ---- */
static int same_field(const ldm_gen_record *x, const ldm_gen_record *y, const ldm_field *f) {
    const char *a = (const char *)x + f->offset, *b = (const char *)y + f->offset;
    switch (f->type) {
    case LDM_FT_STR: case LDM_FT_OSTR: {
        const char *p = *(char *const *)a, *q = *(char *const *)b;
        return (!p && !q) || (p && q && !strcmp(p, q));
    }
    case LDM_FT_DBL: return *(const double *)a == *(const double *)b;
    case LDM_FT_U64: case LDM_FT_ID: return !memcmp(a, b, 8);
    case LDM_FT_GRID: return !memcmp(a, b, sizeof(ldm_grid_spec));
    default: return *(const int *)a == *(const int *)b;
    }
}

static void test_meta(void) {
    ldm_gen_record m;
    ldm_record_init(&m);
    ldm_record_set(&m.ldm_version, "0.1.0");
    ldm_record_set(&m.prompt, "a \"cat\" \xe6\x97\xa5 \x01\t%s \\ \xf0\x9f\x8d\x8e");
    ldm_record_set(&m.negative_prompt, "blurry");
    m.seed = UINT64_MAX;
    m.steps = 25;
    m.guidance = 0.1;
    ldm_record_set(&m.scheduler, "dpmpp_2m");
    m.karras = 1;
    m.eta = 0;
    ldm_record_set(&m.timestep_spacing, "trailing");
    m.width = 64; m.height = 96; m.clip_skip = 2; m.batch_size = 4; m.batch_index = 3;
    ldm_record_set(&m.bundle_hash, "0123abcd");
    ldm_record_set(&m.bundle_path, "/home/someone/models/x.ldmb");
    ldm_record_set(&m.model_name, "x");
    m.grid.rows = 2; m.grid.cols = 3;
    m.grid.guidance[0] = 1; m.grid.guidance[1] = 7.25;
    m.grid.steps[0] = 1; m.grid.steps[1] = 10; m.grid.steps[2] = 1000;
    char *js = ldm_record_png_json(&m);
    int ascii = 1;
    for (const char *p = js; *p; p++)
        if ((unsigned char)*p >= 0x80) ascii = 0;
    CHECK(ascii, "JSON is ASCII: %s", js);
    CHECK(!strstr(js, "bundle_path") && !strstr(js, "/home/someone"), "no bundle path in the chunk: %s", js);
    ldm_gen_record b;
    CHECK(ldm_record_parse_png(js, "t", &b) == 0, "parse: %s", ldm_last_error());
    int all = 1, n = 0;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if (!(f->views & LDM_V_P)) continue;
        n++;
        if (!same_field(&m, &b, f)) { all = 0; printf("field %s differs after the chunk\n", f->name); }
    }
    CHECK(all && n >= 18, "round trip of all %d chunk fields", n);
    char *js2 = ldm_record_png_json(&b);
    CHECK(!strcmp(js, js2), "same text again");
    free(js2);
    ldm_record_free(&b);
    free(js);
    m.grid.rows = 0;
    ldm_record_set(&m.timestep_spacing, NULL);
    js = ldm_record_png_json(&m);
    CHECK(strstr(js, "\"timestep_spacing\":null") && !strstr(js, "grid"), "null spacing, no grid: %s", js);
    CHECK(ldm_record_parse_png(js, "t", &b) == 0 && b.timestep_spacing == NULL && b.grid.rows == 0, "parse");
    ldm_record_free(&b);
    free(js);
    /* every field of a history record in the JSON view, and invalid UTF-8 shown, not dropped */
    ldm_record_set(&m.prompt, "bad \xff\xfe utf8");
    js = ldm_record_json(&m);
    json_t *o = json_loads(js, 0, NULL);
    int nh = 0;
    for (int i = 0; i < ldm_record_field_count; i++) nh += (ldm_record_fields[i].views & LDM_V_H) != 0;
    CHECK(o && json_object_size(o) == (size_t)nh, "JSON view has every history field (%d): %s", nh, js);
    CHECK(o && !strcmp(json_string_value(json_object_get(o, "prompt")), "bad \xef\xbf\xbd\xef\xbf\xbd utf8"),
          "invalid UTF-8 prompt shown with U+FFFD");
    if (o) json_decref(o);
    free(js);
    ldm_record_free(&m);

    static const struct { const char *json, *err; } bad[] = {
        {"not json", "not a JSON object"},
        {"[1]", "not a JSON object"},
        {"{}", "\"ldm_version\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"-1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":false,\"eta\":0,\"timestep_spacing\":null,"
         "\"width\":64,\"height\":64,\"clip_skip\":1,\"batch_size\":1,\"batch_index\":0}", "\"seed\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":0,"
         "\"guidance\":7}", "\"steps\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":1e308}", "\"guidance\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":false,\"eta\":5,\"timestep_spacing\":null}", "\"eta\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":false,\"eta\":0,\"timestep_spacing\":null,"
         "\"width\":64,\"height\":64,\"clip_skip\":1,\"batch_size\":2,\"batch_index\":2}", "batch_index 2"},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":1,\"eta\":0,\"timestep_spacing\":null,"
         "\"width\":64,\"height\":64,\"clip_skip\":1,\"batch_size\":1,\"batch_index\":0}", "\"karras\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":true,\"eta\":0,\"timestep_spacing\":null,"
         "\"width\":64,\"height\":64,\"clip_skip\":1,\"batch_size\":1,\"batch_index\":0,"
         "\"grid\":{\"guidance\":[],\"steps\":[1]}}", "\"grid\""},
        /* the picture copies are found by these hashes (images/<sha>.png): nothing else passes */
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":true,\"eta\":0,\"timestep_spacing\":null,"
         "\"width\":64,\"height\":64,\"clip_skip\":1,\"batch_size\":1,\"batch_index\":0,"
         "\"strength\":1,\"init_image_sha256\":\"../../../../etc/passwd\"}", "\"init_image_sha256\""},
        {"{\"ldm_version\":\"1\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"p\",\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,"
         "\"guidance\":7,\"scheduler\":\"pndm\",\"karras\":true,\"eta\":0,\"timestep_spacing\":null,"
         "\"width\":64,\"height\":64,\"clip_skip\":1,\"batch_size\":1,\"batch_index\":0,"
         "\"strength\":1,\"init_image_sha256\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"mask_sha256\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
         "\"mask_sha256\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int r = ldm_record_parse_png(bad[i].json, "img.png: ldm", &b);
        CHECK(r == -1 && ldm_last_status() == LDM_DATA && strstr(ldm_last_error(), bad[i].err) &&
              strstr(ldm_last_error(), "img.png"),
              "bad meta %zu refused naming %s: %s", i, bad[i].err, ldm_last_error());
    }
}

/* ---- awkward prompts through the real ldmgen ---- */
static void test_prompts(void) {
    char big[2100];
    for (int i = 0; i < 2000; i++) big[i] = "abc %'\"; -"[i % 10];
    big[2000] = 0;
    const struct { const char *prompt, *negative, *grep; } cases[] = {
        {"it's \"quoted\" and 'single' and `back` and \\backslash\\n", "no \"quotes\" 'here'", "quoted"},
        {"100% %s %n %d %% %x percent", "%s%s%s%n", "percent"},
        {"x'); DROP TABLE generations; -- robert", "\" OR 1=1 --", "robert"},
        {"NEAR(a b) AND NOT c* OR \"d\" column:e ^f", "", "near"},
        {"日本語のプロンプト ☃ émoji 🎨 zero\xe2\x80\x8bwidth Ω", "ぼやけた", "日本語のプロンプト"},
        {"\x01\x02\x03 bell\x07 esc\x1b[31mred\x1b[0m tab\there cr\rlf\nend \x7f del", "\x1b[0m", "bell"},
        {"\xef\xbb\xbf" "bom \xef\xbf\xbd replacement \xf0\x9f\x98\x80 smile", "", "replacement"},
        {big, big, "abc"},
    };
    const int n = (int)(sizeof cases / sizeof *cases);
    char out[512], err[512], json[512];
    path_in(err, sizeof err, "err");
    path_in(json, sizeof json, "json");
    for (int i = 0; i < n; i++) {
        path_in(out, sizeof out, "p.png");
        char *argv[] = {gen, "--bundle", bundle, "--db", dbp, "-n", "1", "--seed", "9", "-q",
                        "--overwrite", "-o", out, "--negative", (char *)cases[i].negative, "--",
                        (char *)cases[i].prompt, NULL};
        int rc = run(argv, NULL, err);
        CHECK(rc == 0, "case %d: ldmgen exits 0 (got %d)", i, rc);
        if (rc) continue;
        /* the database, read directly */
        ldm_db *db = ldm_db_open(dbp);
        one_row o;
        memset(&o, 0, sizeof o);
        ldm_history_filter f;
        memset(&f, 0, sizeof f);
        f.limit = 1;
        ldm_db_query(db, &f, take_row, &o);
        CHECK(!strcmp(o.prompt, cases[i].prompt), "case %d: prompt stored verbatim", i);
        CHECK(!strcmp(o.negative, cases[i].negative), "case %d: negative stored verbatim", i);
        CHECK(!strcmp(o.status, "ok"), "case %d: status %s", i, o.status);
        ldm_db_close(db);
        /* history --json --grep finds it and gives the text back */
        char *hargv[] = {gen, "history", "--db", dbp, "--json", "--limit", "0", "--grep",
                         (char *)cases[i].grep, NULL};
        rc = run(hargv, json, err);
        CHECK(rc == 0, "case %d: history --grep exits 0 (got %d)", i, rc);
        size_t len;
        char *text = ldm_read_file(json, &len);
        int found = 0, lines = 0;
        for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            lines++;
            json_t *o2 = json_loads(line, 0, NULL);
            json_t *pv = o2 ? json_object_get(o2, "prompt") : NULL;
            json_t *nv = o2 ? json_object_get(o2, "negative_prompt") : NULL;
            if (pv && nv && !strcmp(json_string_value(pv), cases[i].prompt) &&
                !strcmp(json_string_value(nv), cases[i].negative) &&
                json_integer_value(json_object_get(o2, "id")) == o.id)
                found = 1;
            if (o2) json_decref(o2);
        }
        CHECK(found, "case %d: --grep '%s' finds it, JSON round trip verbatim (%d lines)", i,
              cases[i].grep, lines);
        free(text);
        /* the PNG: parameters starts with the prompt, ldm holds prompt and negative */
        ldm_png_text *t = NULL;
        int nt = 0, w, h;
        uint8_t *rgb = NULL;
        CHECK(ldm_png_read(out, &rgb, &w, &h, &t, &nt) == 0, "case %d: read PNG", i);
        const char *params = NULL, *meta = NULL;
        for (int k = 0; k < nt; k++) {
            if (!strcmp(t[k].key, "parameters")) params = t[k].text;
            if (!strcmp(t[k].key, "ldm")) meta = t[k].text;
        }
        size_t pl = strlen(cases[i].prompt);
        CHECK(params && !strncmp(params, cases[i].prompt, pl) && params[pl] == '\n',
              "case %d: parameters chunk starts with the prompt", i);
        ldm_gen_record m;
        CHECK(meta && ldm_record_parse_png(meta, "ldm", &m) == 0 && !strcmp(m.prompt, cases[i].prompt) &&
              !strcmp(m.negative_prompt, cases[i].negative), "case %d: ldm chunk verbatim", i);
        if (meta) ldm_record_free(&m);
        ldm_png_texts_free(t, nt);
        free(rgb);
    }
    /* searches made of quotes and SQL are just text */
    static const char *const greps[] = {"\"", "'); DROP TABLE generations; --", "NEAR(", "*", "a OR b",
                                        "%", "col:umn", "\"unterminated"};
    for (size_t i = 0; i < sizeof greps / sizeof *greps; i++) {
        char *hargv[] = {gen, "history", "--db", dbp, "--json", "--grep", (char *)greps[i], NULL};
        int rc = run(hargv, json, err);
        CHECK(rc == 0, "history --grep '%s' exits 0 (got %d)", greps[i], rc);
    }
    ldm_db *db = ldm_db_open(dbp);
    CHECK(db && ldm_db_check(db) == 0, "database intact");
    ldm_db_close(db);
}

/* ---- replay says so when the image differs ---- */
/* str with every `from` replaced by `to` (malloc'd). */
static char *replace_all(const char *str, const char *from, const char *to) {
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    for (const char *p = strstr(str, from); p; p = strstr(p + fl, from)) n++;
    char *out = malloc(strlen(str) + n * (tl > fl ? tl - fl : 0) + 1), *w = out;
    for (const char *p = str;;) {
        const char *q = strstr(p, from);
        if (!q) { strcpy(w, p); break; }
        memcpy(w, p, (size_t)(q - p)); w += q - p;
        memcpy(w, to, tl); w += tl;
        p = q + fl;
    }
    return out;
}

/* An image made by another ldm version (its metadata says so): replay gives the same
 * pixels, other PNG bytes (the new metadata has this version), and calls that a match. */
static void test_replay_other_version(void) {
    char out[512], old[512], r[512], err[512], outp[512];
    path_in(out, sizeof out, "v.png");
    path_in(old, sizeof old, "v-old.png");
    path_in(r, sizeof r, "v-replay.png");
    path_in(err, sizeof err, "err");
    path_in(outp, sizeof outp, "stdout");
    char *argv[] = {gen, "--bundle", bundle, "--no-history", "-n", "2", "--seed", "6", "-q", "-o", out,
                    "an old image", NULL};
    CHECK(run(argv, NULL, err) == 0, "generate");
    uint8_t *rgb = NULL;
    int w, h, nt = 0;
    ldm_png_text *t = NULL;
    CHECK(ldm_png_read(out, &rgb, &w, &h, &t, &nt) == 0 && nt == 2, "read: %s", ldm_last_error());
    if (!rgb || nt != 2) return;
    char *p0 = replace_all(t[0].text, "ldm " LDM_VERSION, "ldm 0.0.9");
    char *p1 = replace_all(t[1].text, "\"ldm_version\":\"" LDM_VERSION "\"", "\"ldm_version\":\"0.0.9\"");
    CHECK(strcmp(p1, t[1].text) != 0, "the version is in the ldm chunk");
    ldm_png_text nt2[2] = {{t[0].key, p0}, {t[1].key, p1}};
    CHECK(ldm_png_write(old, rgb, w, h, nt2, 2) == 0, "write the old image");
    char *rargv[] = {gen, "replay", "--bundle", bundle, "--no-history", "-o", r, old, NULL};
    int rc = run(rargv, outp, err);
    char *o = ldm_read_file(outp, NULL);
    CHECK(rc == 0 && o && strstr(o, "the same pixels") && strstr(o, "made by ldm 0.0.9"),
          "replay of another version's image: a match on the pixels (rc %d): %s", rc, o ? o : "");
    free(o);
    free(p0); free(p1); free(rgb);
    ldm_png_texts_free(t, nt);
}

static void test_replay_differs(void) {
    char out[512], r1[512], err[512], outp[512];
    path_in(out, sizeof out, "orig.png");
    path_in(r1, sizeof r1, "r1.png");
    path_in(err, sizeof err, "err");
    path_in(outp, sizeof outp, "stdout");
    char *argv[] = {gen, "--bundle", bundle, "--db", dbp, "-n", "1", "--seed", "4", "-q", "-o", out,
                    "replay me", NULL};
    CHECK(run(argv, NULL, err) == 0, "generate");
    ldm_db *db = ldm_db_open(dbp);
    one_row o;
    memset(&o, 0, sizeof o);
    ldm_history_filter f;
    memset(&f, 0, sizeof f);
    f.limit = 1;
    ldm_db_query(db, &f, take_row, &o);
    ldm_db_close(db);
    char id[32];
    snprintf(id, sizeof id, "%lld", (long long)o.id);
    char *rargv[] = {gen, "replay", "--db", dbp, "--overwrite", "-o", r1, id, NULL};
    CHECK(run(rargv, outp, err) == 0, "replay of an untouched record: identical");
    sqlite3 *h;
    sqlite3_open(dbp, &h);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(h, "UPDATE generations SET png_sha256 = ?1 WHERE id = ?2", -1, &st, NULL);
    sqlite3_bind_text(st, 1, "0000000000000000000000000000000000000000000000000000000000000000", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, o.id);
    CHECK(sqlite3_step(st) == SQLITE_DONE, "tamper");
    sqlite3_finalize(st);
    sqlite3_close(h);
    int rc = run(rargv, outp, err);
    CHECK(rc == 1, "replay of a changed record: exit 1 (got %d)", rc);
    char *e = ldm_read_file(err, NULL);
    CHECK(e && strstr(e, "differs from generation") && strstr(e, "recorded 0000000000"),
          "says it differs, with both hashes: %s", e ? e : "");
    free(e);
    /* an interrupted record has nothing to compare with */
    sqlite3_open(dbp, &h);
    sqlite3_prepare_v2(h, "UPDATE generations SET png_sha256 = NULL, status = 'interrupted' WHERE id = ?1",
                       -1, &st, NULL);
    sqlite3_bind_int64(st, 1, o.id);
    sqlite3_step(st);
    sqlite3_finalize(st);
    sqlite3_close(h);
    rc = run(rargv, outp, err);
    e = ldm_read_file(err, NULL);
    CHECK(rc == 1 && e && strstr(e, "'interrupted'") && strstr(e, "no recorded PNG"), "interrupted record: exit 1, says why (%d): %s", rc, e ? e : "");
    free(e);
    CHECK(access(r1, F_OK) == 0, "the regenerated image is still written");
}

int main(void) {
    const char *build = getenv("LDM_BUILD");
    if (!build || !*build) build = "build";
    snprintf(gen, sizeof gen, "%s/ldmgen", build);
    snprintf(pack, sizeof pack, "%s/ldmpack", build);
    snprintf(dir, sizeof dir, "/tmp/ldm_test_generate.XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    path_in(bundle, sizeof bundle, "sd1.ldmb");
    path_in(dbp, sizeof dbp, "h.db");

    test_migrate_v1();
    test_migrated_rows();
    test_meta();
    char *pargv[] = {pack, "-q", "tests/fixtures/models/sd1", "-o", bundle, NULL};
    int rc = run(pargv, NULL, NULL);
    CHECK(rc == 0, "pack the sd1 fixture (%d)", rc);
    if (rc == 0) {
        test_prompts();
        test_replay_differs();
        test_replay_other_version();
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    TEST_END();
}
