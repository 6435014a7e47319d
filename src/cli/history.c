/* history.c - `ldmgen history` and `ldmgen show`: query the SQLite history and print
 * it as a table, as JSON lines (jansson does the escaping) or one record in full. */
#include "cli/history.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

void ldm_history_print_header(FILE *f) {
    fprintf(f, "%6s  %-19s  %-11s  %20s  %5s  %5s  %-8s  %-9s  %s\n", "id", "created", "status",
            "seed", "steps", "cfg", "sampler", "size", "prompt");
}

void ldm_history_print_row(FILE *f, const ldm_record *r) {
    char when[20], size[24], sampler[24];
    snprintf(when, sizeof when, "%.19s", r->created_at);
    for (char *p = when; *p; p++)
        if (*p == 'T') *p = ' ';
    snprintf(size, sizeof size, "%dx%d", r->width, r->height);
    snprintf(sampler, sizeof sampler, "%s%s", r->scheduler ? r->scheduler : "?", r->karras ? "+k" : "");
    /* One line per record: control characters in the prompt are shown as spaces. */
    char prompt[96];
    size_t n = 0;
    for (const char *p = r->prompt ? r->prompt : ""; *p && n + 4 < sizeof prompt; p++)
        prompt[n++] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? ' ' : *p;
    if (r->prompt && strlen(r->prompt) > n) { memcpy(prompt + n, "...", 3); n += 3; }
    prompt[n] = '\0';
    fprintf(f, "%6lld  %-19s  %-11s  %20llu  %5d  %5.4g  %-8s  %-9s  %s\n", (long long)r->id, when,
            r->status, (unsigned long long)r->seed, r->steps, r->guidance, sampler, size, prompt);
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *record_json(const ldm_record *r) {
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer(r->id));
    json_object_set_new(o, "grid_id", r->grid_id ? json_integer(r->grid_id) : json_null());
    json_object_set_new(o, "created_at", json_string(r->created_at));
    json_object_set_new(o, "finished_at", r->finished_at[0] ? json_string(r->finished_at) : json_null());
    json_object_set_new(o, "status", json_string(r->status));
    json_object_set_new(o, "error", str_or_null(r->error));
    json_object_set_new(o, "bundle_hash", str_or_null(r->bundle_hash));
    json_object_set_new(o, "bundle_path", str_or_null(r->bundle_path));
    json_object_set_new(o, "prompt", str_or_null(r->prompt));
    json_object_set_new(o, "negative_prompt", str_or_null(r->negative_prompt));
    /* seeds reach 2^64-1, beyond JSON's safe integers: a decimal string. */
    json_object_set_new(o, "seed", json_string(seed));
    json_object_set_new(o, "steps", json_integer(r->steps));
    json_object_set_new(o, "guidance", json_real(r->guidance));
    json_object_set_new(o, "scheduler", str_or_null(r->scheduler));
    json_object_set_new(o, "karras", json_boolean(r->karras));
    json_object_set_new(o, "eta", json_real(r->eta));
    json_object_set_new(o, "timestep_spacing", str_or_null(r->timestep_spacing));
    json_object_set_new(o, "width", json_integer(r->width));
    json_object_set_new(o, "height", json_integer(r->height));
    json_object_set_new(o, "clip_skip", json_integer(r->clip_skip));
    json_object_set_new(o, "batch_size", json_integer(r->batch_size > 0 ? r->batch_size : 1));
    json_object_set_new(o, "batch_index", json_integer(r->batch_index));
    json_object_set_new(o, "replay_of", r->replay_of ? json_integer(r->replay_of) : json_null());
    json_object_set_new(o, "backend", str_or_null(r->backend));
    json_object_set_new(o, "ldm_version", str_or_null(r->ldm_version));
    json_object_set_new(o, "output_path", str_or_null(r->output_path));
    json_object_set_new(o, "png_sha256", str_or_null(r->png_sha256));
    json_object_set_new(o, "t_text_ms", json_real(round(r->t_text_ms * 10) / 10));
    json_object_set_new(o, "t_sampling_ms", json_real(round(r->t_sampling_ms * 10) / 10));
    json_object_set_new(o, "t_decode_ms", json_real(round(r->t_decode_ms * 10) / 10));
    json_object_set_new(o, "t_total_ms", json_real(round(r->t_total_ms * 10) / 10));
    return o;
}

void ldm_history_print_json(FILE *f, const ldm_record *r) {
    json_t *o = record_json(r);
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(15));
    if (s) fprintf(f, "%s\n", s);
    free(s);
    json_decref(o);
}

void ldm_history_print_full(FILE *f, const ldm_record *r) {
    json_t *o = record_json(r);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        if (json_is_string(v)) fprintf(f, "%-16s %s\n", key, json_string_value(v));
        else if (json_is_null(v)) fprintf(f, "%-16s -\n", key);
        else {
            char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
            fprintf(f, "%-16s %s\n", key, s ? s : "?");
            free(s);
        }
    }
    json_decref(o);
}

static ldm_db *open_db(const char *db_path) {
    char path[4096];
    if (!db_path) {
        if (ldm_db_default_path(path, sizeof path) != 0) return NULL;
        db_path = path;
    }
    ldm_db *db = ldm_db_open(db_path);
    if (db) ldm_db_reap_interrupted(db);
    return db;
}

typedef struct { FILE *f; int json, rows; } print_ctx;

static int print_one(const ldm_record *r, void *ctx) {
    print_ctx *p = ctx;
    if (p->json) ldm_history_print_json(p->f, r);
    else {
        if (p->rows == 0) ldm_history_print_header(p->f);
        ldm_history_print_row(p->f, r);
    }
    p->rows++;
    return 0;
}

static int parse_u64(const char *s, uint64_t *v) {
    if (!*s || *s == '-' || *s == '+') return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

static void history_usage(FILE *f) {
    fputs("usage: ldmgen history [--grep TEXT] [--since DATE] [--until DATE] [--seed S]\n"
          "                      [--bundle HASH|PATH] [--status ok|failed|interrupted|running]\n"
          "                      [--grid ID] [--limit N] [--json] [--db PATH]\n"
          "       ldmgen history --check [--db PATH]\n"
          "Lists recorded generations, newest first (default limit 20; --limit 0 for all).\n"
          "--check verifies the database (SQLite integrity and foreign key checks).\n"
          "DATE is compared with the UTC creation time, e.g. 2026-11-26 or 2026-11-26T10:00.\n",
          f);
}

int ldm_cmd_history(int argc, char **argv, const char *db_path) {
    static const struct option opts[] = {
        {"grep", required_argument, 0, 'G'},   {"since", required_argument, 0, 'S'},
        {"until", required_argument, 0, 'U'},  {"seed", required_argument, 0, 's'},
        {"bundle", required_argument, 0, 'B'}, {"status", required_argument, 0, 'T'},
        {"limit", required_argument, 0, 'l'},  {"json", no_argument, 0, 'j'},
        {"grid", required_argument, 0, 'R'},   {"db", required_argument, 0, 'D'},
        {"check", no_argument, 0, 'C'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    ldm_history_filter f = {0};
    f.limit = 20;
    int json = 0, check = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case 'G': f.grep = optarg; break;
        case 'S': f.since = optarg; break;
        case 'U': f.until = optarg; break;
        case 'B': f.bundle = optarg; break;
        case 'D': db_path = optarg; break;
        case 'j': json = 1; break;
        case 'C': check = 1; break;
        case 'T':
            if (strcmp(optarg, "ok") && strcmp(optarg, "failed") && strcmp(optarg, "interrupted") &&
                strcmp(optarg, "running")) {
                fprintf(stderr, "ldmgen history: --status '%s': expected ok, failed, interrupted or running\n", optarg);
                return 2;
            }
            f.status = optarg;
            break;
        case 's':
            if (parse_u64(optarg, &f.seed) != 0) {
                fprintf(stderr, "ldmgen history: --seed '%s': expected an integer from 0 to 18446744073709551615\n", optarg);
                return 2;
            }
            f.has_seed = 1;
            break;
        case 'l': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 0 || v > 1000000000) {
                fprintf(stderr, "ldmgen history: --limit '%s': expected a number >= 0\n", optarg);
                return 2;
            }
            f.limit = (int)v;
            break;
        }
        case 'R': {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end || end == optarg || v <= 0) {
                fprintf(stderr, "ldmgen history: --grid '%s': expected a grid id\n", optarg);
                return 2;
            }
            f.grid_id = v;
            break;
        }
        case 'h': history_usage(stdout); return 0;
        default:
            fprintf(stderr, "ldmgen history: unknown or incomplete option '%s'\n", argv[optind - 1]);
            history_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ldmgen history: unexpected argument '%s' (to search prompts use --grep)\n", argv[optind]);
        return 2;
    }
    ldm_db *db = open_db(db_path);
    if (!db) { fprintf(stderr, "ldmgen history: %s\n", ldm_last_error()); return 1; }
    if (check) {
        int bad = ldm_db_check(db);
        if (bad) fprintf(stderr, "ldmgen history: %s\n", ldm_last_error());
        else printf("ok: %s\n", ldm_db_path(db));
        ldm_db_close(db);
        return bad ? 1 : 0;
    }
    print_ctx p = {stdout, json, 0};
    int rc = ldm_db_query(db, &f, print_one, &p);
    if (rc != 0) fprintf(stderr, "ldmgen history: %s\n", ldm_last_error());
    else if (!json && p.rows == 0) fprintf(stderr, "no matching generations in %s\n", ldm_db_path(db));
    ldm_db_close(db);
    return rc ? 1 : 0;
}

static int show_one(const ldm_record *r, void *ctx) {
    print_ctx *p = ctx;
    if (p->json) ldm_history_print_json(p->f, r);
    else ldm_history_print_full(p->f, r);
    return 0;
}

int ldm_cmd_show(int argc, char **argv, const char *db_path) {
    int json = 0;
    const char *id_text = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--db") && i + 1 < argc) db_path = argv[++i];
        else if (!strcmp(argv[i], "--help")) { puts("usage: ldmgen show [--json] [--db PATH] ID"); return 0; }
        else if (!id_text && argv[i][0] != '-') id_text = argv[i];
        else { fprintf(stderr, "ldmgen show: unexpected argument '%s'\n", argv[i]); return 2; }
    }
    char *end;
    long long id = id_text ? strtoll(id_text, &end, 10) : 0;
    if (!id_text || *end || id <= 0) {
        fprintf(stderr, "ldmgen show: expected a generation id (see ldmgen history), got '%s'\n", id_text ? id_text : "");
        return 2;
    }
    ldm_db *db = open_db(db_path);
    if (!db) { fprintf(stderr, "ldmgen show: %s\n", ldm_last_error()); return 1; }
    print_ctx p = {stdout, json, 0};
    int found = ldm_db_get(db, id, show_one, &p);
    if (found < 0) fprintf(stderr, "ldmgen show: %s\n", ldm_last_error());
    else if (found == 0) fprintf(stderr, "ldmgen show: no generation %lld in %s\n", id, ldm_db_path(db));
    ldm_db_close(db);
    return found == 1 ? 0 : 1;
}
