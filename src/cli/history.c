/* history.c - `ldmgen history` and `ldmgen show`: query the SQLite history and print
 * it as a table, as JSON lines (jansson does the escaping) or one record in full. */
#include "cli/history.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/common.h"

void ldm_history_print_header(FILE *f) {
    fprintf(f, "%6s  %-19s  %-11s  %20s  %5s  %5s  %-8s  %-9s  %s\n", "id", "created", "status",
            "seed", "steps", "cfg", "sampler", "size", "prompt");
}

void ldm_history_print_row(FILE *f, const ldm_gen_record *r) {
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

void ldm_history_print_json(FILE *f, const ldm_gen_record *r) {
    char *s = ldm_record_json(r);
    fprintf(f, "%s\n", s);
    free(s);
}

void ldm_history_print_full(FILE *f, const ldm_gen_record *r) {
    char *s = ldm_record_text(r);
    fputs(s, f);
    free(s);
}

static ldm_db *open_db(const char *db_opt) {
    char path[4096];
    if (cli_db_path(db_opt, path, sizeof path) != 0) return NULL;
    ldm_db *db = ldm_db_open(path);
    if (db) ldm_db_reap_interrupted(db);
    return db;
}

typedef struct { FILE *f; int json, rows; } print_ctx;

static int print_one(const ldm_gen_record *r, void *ctx) {
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
          "       ldmgen history merge OUT.db IN.db...  (ldmgen history merge --help)\n"
          "Lists recorded generations, newest first (default limit 20; --limit 0 for all).\n"
          "--check verifies the database (SQLite integrity and foreign key checks).\n"
          "DATE is compared with the UTC creation time, e.g. 2026-11-26 or 2026-11-26T10:00.\n",
          f);
}

/* An ISO date or date-time as created_at is written (UTC): YYYY-MM-DD, optionally with
 * "T" or " " and HH:MM, HH:MM:SS or HH:MM:SS.fff, optionally ending in Z.  Written to
 * out in created_at's form ("T" separator, no Z) so text comparison is correct. */
static int parse_when(const char *s, char *out, size_t n) {
    int y, mo, d, h = 0, mi = 0, k = 0;
    double sec = 0;
    char sep = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &k) != 3 || k != 10) return -1;
    const char *p = s + 10;
    if (*p == 'T' || *p == ' ') {
        sep = 1;
        int k2 = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &h, &mi, &k2) != 2 || k2 != 5) return -1;
        p += 1 + k2;
        if (*p == ':') {
            char *end;
            sec = strtod(p + 1, &end);
            if (end == p + 1 || sec < 0 || sec >= 61) return -1;
            p = end;
        }
    }
    if (*p == 'Z') p++;
    if (*p) return -1;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59)
        return -1;
    if (sep) snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%06.3f", y % 10000, mo % 100, d % 100,
                      h % 100, mi % 100, sec);
    else snprintf(out, n, "%04d-%02d-%02d", y % 10000, mo % 100, d % 100);
    return 0;
}

int cli_history(int argc, char **argv) {
    const char *db_path = NULL;
    char since[40], until[40];
    static const struct option opts[] = {
        {"grep", required_argument, 0, 'G'},   {"since", required_argument, 0, 'S'},
        {"until", required_argument, 0, 'U'},  {"seed", required_argument, 0, 's'},
        {"bundle", required_argument, 0, 'B'}, {"status", required_argument, 0, 'T'},
        {"limit", required_argument, 0, 'l'},  {"json", no_argument, 0, 'j'},
        {"grid", required_argument, 0, 'R'},   {"db", required_argument, 0, 'D'},
        {"check", no_argument, 0, 'C'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    if (argc > 1 && !strcmp(argv[1], "merge")) return cli_history_merge(argc - 1, argv + 1);
    ldm_history_filter f = {0};
    f.limit = 20;
    int json = 0, check = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case 'G': f.grep = optarg; break;
        case 'S': case 'U': {
            char *buf = c == 'S' ? since : until;
            if (parse_when(optarg, buf, sizeof since)) {
                fprintf(stderr, "ldmgen history: --%s '%s': expected a UTC date or time such as "
                        "2026-11-26 or 2026-11-26T10:00\n", c == 'S' ? "since" : "until", optarg);
                return 2;
            }
            if (c == 'S') f.since = buf;
            else f.until = buf;
            break;
        }
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

int cli_show(int argc, char **argv) {
    const char *db_path = NULL;
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
    ldm_gen_record r;
    int found = ldm_db_get(db, id, &r);
    if (found < 0) fprintf(stderr, "ldmgen show: %s\n", ldm_last_error());
    else if (found == 0) fprintf(stderr, "ldmgen show: no generation %lld in %s\n", id, ldm_db_path(db));
    if (found == 1) {
        if (json) ldm_history_print_json(stdout, &r);
        else ldm_history_print_full(stdout, &r);
        ldm_record_free(&r);
    }
    ldm_db_close(db);
    return found == 1 ? 0 : 1;
}
