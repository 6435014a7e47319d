/* replay.c - `ldmgen replay`: the record comes from the history (by id) or from a PNG's
 * "ldm" chunk; the library turns it into the job that made it (ldm_job_from_record),
 * runs it, and this file compares the new PNG with the recorded one. */
#include "cli/replay.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/db.h"
#include "app/job.h"
#include "app/record.h"
#include "cli/cli.h"
#include "core/common.h"
#include "core/sha256.h"
#include "format/png_io.h"

static const char REPLAY_USAGE[] =
    "usage: ldmgen replay [options] ID|IMAGE.png\n"
    "Regenerate a recorded image (history ID, or a PNG made by ldmgen) with the same\n"
    "parameters and report whether the new PNG is byte-identical.\n"
    "  -o, --output FILE     PNG to write (default replay-ID.png / replay-NAME.png, or\n"
    "                        replay-ID-N.png when taken); an existing FILE is an error\n"
    "      --overwrite       replace an existing FILE\n"
    "      --bundle FILE     bundle to use; its content hash must equal the recorded one\n"
    "                        (default: the path in the history row; for a PNG, the\n"
    "                        newest bundle of that hash in the history, else the\n"
    "                        default bundle)\n"
    "      --db PATH         history database (default as for ldmgen)\n"
    "      --no-history      do not record the replay\n"
    "      --no-cache        do not use the prompt-embedding cache\n"
    "      --init-img FILE   the init image of an image-to-image generation (default: its\n"
    "                        copy beside the history, else its recorded path)\n"
    "      --mask FILE       the mask of an inpainting generation (default: likewise)\n"
    "      --device D        auto, cpu or cuda (default: the recorded backend when usable;\n"
    "                        on another backend the pixels differ and replay says by how much)\n"
    "  -q, --quiet           print errors only;  -v, --verbose  print details\n"
    "Exit status: 0 identical, 1 different or error, 2 usage error, 130 interrupted.\n";

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Compare two images; describes the difference in msg.  1 identical, 0 not. */
static int same_pixels(const uint8_t *a, int aw, int ah, const uint8_t *b, int bw, int bh,
                       char *msg, size_t cap) {
    if (aw != bw || ah != bh) {
        snprintf(msg, cap, "pixels differ: size %dx%d, recorded %dx%d", bw, bh, aw, ah);
        return 0;
    }
    size_t n = (size_t)aw * ah * 3, diff = 0;
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d) { diff++; if (d > maxd) maxd = d; }
    }
    if (!diff) { snprintf(msg, cap, "pixels identical"); return 1; }
    snprintf(msg, cap, "pixels differ: %zu of %zu values, by up to %d levels", diff, n, maxd);
    return 0;
}

static char *path_stem(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *s = ldm_xstrdup(base);
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = 0;
    return s;
}

/* A PNG names its bundle by content hash only: the newest history row made with that
 * bundle whose file still exists gives the path. */
typedef struct { const char *hash; char path[4096]; } find_bundle;
static int pick_bundle(const ldm_gen_record *r, void *ctx) {
    find_bundle *f = ctx;
    if (strcmp(r->bundle_hash, f->hash) || !r->bundle_path[0] || !file_exists(r->bundle_path)) return 0;
    snprintf(f->path, sizeof f->path, "%s", r->bundle_path);
    return 1;
}

static int bundle_from_history(const char *db_path, const char *hash, char *out, size_t n) {
    ldm_db *db = ldm_db_open(db_path);
    if (!db) return -1;
    find_bundle f = {hash, ""};
    ldm_history_filter flt = {0};
    flt.bundle = hash;
    int rc = ldm_db_query(db, &flt, pick_bundle, &f);
    ldm_db_close(db);
    if (rc || !f.path[0]) return -1;
    snprintf(out, n, "%s", f.path);
    return 0;
}

/* The first file the job wrote (the image; a latent picture comes after it). */
static void note_written(void *user, const char *path) {
    char *w = user;
    if (!w[0]) snprintf(w, 4096, "%s", path);
}

static int err(const char *what, ldm_status st) {
    char *e = ldm_escape_controls(ldm_last_error());
    char msg[4200];
    snprintf(msg, sizeof msg, "%s%s%s", what ? what : "", what ? ": " : "", e);
    free(e);
    return cli_exit("ldmgen replay", st, msg);
}

/* An input picture of the recorded generation: the option's file, else the copy beside
 * the database, else the recorded path (*path on entry); its pixels are checked later. */
static int find_input(const char *what, const char *opt_name, const char *sha, const char *opt,
                      const char *db_path, const char **path, char **copy) {
    if (opt) {
        *path = opt;
        return 0;
    }
    *copy = db_path ? ldm_image_copy_path(db_path, sha) : NULL;
    if (*copy && file_exists(*copy)) {
        *path = *copy;
        return 0;
    }
    if (*path && file_exists(*path)) return 0;
    char *rec = *path ? ldm_escape_controls(*path) : NULL;
    fprintf(stderr, "ldmgen replay: the %s (pixels SHA-256 %s) is neither in %s nor at %s; give it "
            "with %s FILE\n", what, sha, *copy ? *copy : "the history's images folder",
            rec ? rec : "its recorded path", opt_name);
    free(rec);
    return -1;
}

int cli_replay(int argc, char **argv, const volatile int *interrupt) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"bundle", required_argument, 0, 'B'},
        {"db", required_argument, 0, 'D'},     {"no-history", no_argument, 0, 'N'},
        {"no-cache", no_argument, 0, 'C'},     {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},      {"help", no_argument, 0, 'h'},
        {"init-img", required_argument, 0, 'I'}, {"overwrite", no_argument, 0, 'W'},
        {"mask", required_argument, 0, 'M'},   {"device", required_argument, 0, 'E'},
        {0, 0, 0, 0},
    };
    const char *out = NULL, *bundle = NULL, *db_opt = NULL, *init_opt = NULL, *mask_opt = NULL;
    int no_history = 0, no_cache = 0, overwrite = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:qvh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'B': bundle = optarg; break;
        case 'D': db_opt = optarg; break;
        case 'N': no_history = 1; break;
        case 'C': no_cache = 1; break;
        case 'I': init_opt = optarg; break;
        case 'M': mask_opt = optarg; break;
        case 'W': overwrite = 1; break;
        case 'E':
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "ldmgen replay: device \"%s\": expected auto, cpu or cuda\n", optarg);
                return 2;
            }
            cli_device = optarg;
            break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case 'h': fputs(REPLAY_USAGE, stdout); return 0;
        case ':': fprintf(stderr, "ldmgen replay: option %s needs a value\n", argv[optind - 1]); return 2;
        default: fprintf(stderr, "ldmgen replay: unknown option %s (try ldmgen replay --help)\n", argv[optind - 1]); return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "ldmgen replay: expected one generation id or PNG file, got %d arguments\n", argc - optind);
        return 2;
    }
    const char *what = argv[optind];
    int by_id = what[0] != 0 && strspn(what, "0123456789") == strlen(what);
    char db_path[4096];
    int have_db = cli_db_path(db_opt, db_path, sizeof db_path) == 0;
    ldm_gen_record m;
    ldm_record_init(&m);
    uint8_t *orig = NULL;
    int ow = 0, oh = 0, rc = 1;
    char *default_out = NULL, orig_sha[65] = "", status[16] = "";
    long long id = 0;
    if (by_id) {
        id = strtoll(what, NULL, 10);
        if (!have_db) { rc = err(NULL, LDM_RUNTIME); goto done; }
        ldm_db *db = ldm_db_open(db_path);
        if (!db) { rc = err(NULL, LDM_RUNTIME); goto done; }
        ldm_db_reap_interrupted(db);
        ldm_record_free(&m);
        int found = ldm_db_get(db, id, &m);
        if (found <= 0) {
            if (found == 0) fprintf(stderr, "ldmgen replay: no generation %lld in %s\n", id, ldm_db_path(db));
            else err(NULL, LDM_RUNTIME);
            ldm_db_close(db);
            ldm_record_init(&m);
            goto done;
        }
        ldm_db_close(db);
        snprintf(status, sizeof status, "%s", m.status);
        if (m.png_sha256) snprintf(orig_sha, sizeof orig_sha, "%s", m.png_sha256);
        /* the recorded file, when it is still the recorded image, gives a pixel comparison */
        char fsha[65];
        if (m.png_sha256 && !m.grid_id && m.output_path && file_exists(m.output_path) &&
            ldm_sha256_file(m.output_path, fsha) == 0 && !strcmp(fsha, m.png_sha256))
            if (ldm_png_read(m.output_path, &orig, &ow, &oh, NULL, NULL)) orig = NULL;
        default_out = ldm_xmalloc(48);
        snprintf(default_out, 48, "replay-%lld.png", id);
    } else {
        ldm_png_text *texts = NULL;
        int nt = 0;
        if (ldm_png_read(what, &orig, &ow, &oh, &texts, &nt)) { rc = err(NULL, LDM_DATA); goto done; }
        const char *meta = NULL;
        for (int i = 0; i < nt; i++)
            if (!strcmp(texts[i].key, "ldm")) meta = texts[i].text;
        char where[4200];
        snprintf(where, sizeof where, "%s: \"ldm\" chunk", what);
        ldm_record_free(&m);
        int bad = !meta ? ldm_error_kind(LDM_DATA, "%s: no \"ldm\" text chunk: not an image made by "
                                         "ldmgen (a latent picture has none either)", what)
                        : ldm_record_parse_png(meta, where, &m);
        ldm_png_texts_free(texts, nt);
        if (bad) { ldm_record_init(&m); rc = err(NULL, LDM_DATA); goto done; }
        if (ldm_sha256_file(what, orig_sha)) { rc = err(NULL, LDM_RUNTIME); goto done; }
        char *stem = path_stem(what);
        size_t n = 2 * strlen(stem) + 16;   /* the name is a pattern: its braces doubled */
        default_out = ldm_xmalloc(n);
        char *w = default_out + sprintf(default_out, "replay-");
        for (const char *c = stem; *c; c++) {
            *w++ = *c;
            if (*c == '{' || *c == '}') *w++ = *c;
        }
        strcpy(w, ".png");
        free(stem);
    }

    /* ---- the job ---- */
    ldm_job j;
    ldm_job_init(&j);
    ldm_status st = ldm_job_from_record(&m, &j);
    if (st) { rc = err(by_id ? NULL : what, st); goto done; }
    char bundle_buf[4096];
    if (bundle) {
        j.bundle_path = bundle;
    } else if (m.bundle_path && m.bundle_path[0]) {   /* a history row knows where it was */
        if (!file_exists(m.bundle_path)) {
            fprintf(stderr, "ldmgen replay: the recorded bundle %s does not exist; give the bundle "
                    "with --bundle FILE (its content hash must be %s)\n", m.bundle_path, m.bundle_hash);
            goto done;
        }
        j.bundle_path = m.bundle_path;
    } else {                                           /* a PNG names only the hash */
        if (!(have_db && bundle_from_history(db_path, m.bundle_hash, bundle_buf, sizeof bundle_buf) == 0) &&
            cli_bundle_path(NULL, bundle_buf, sizeof bundle_buf)) {
            rc = err(NULL, LDM_RUNTIME);
            goto done;
        }
        j.bundle_path = bundle_buf;
    }
    /* the init image of an image-to-image generation: --init-img, else the copy beside
     * the database, else the recorded path; its pixels must have the recorded hash */
    char *copy = NULL, *mcopy = NULL;
    if (m.init_image_sha256) {
        if (find_input("init image", "--init-img", m.init_image_sha256, init_opt,
                       have_db ? db_path : NULL, &j.init_image, &copy) ||
            (m.mask_sha256 && find_input("mask", "--mask", m.mask_sha256, mask_opt,
                                         have_db ? db_path : NULL, &j.mask_image, &mcopy))) {
            free(copy);
            free(mcopy);
            goto done;
        }
        j.no_image_copy = 1;
    }
    j.output = out ? out : default_out;
    j.db_path = have_db ? db_path : NULL;
    j.no_history = no_history;
    j.no_cache = no_cache;
    j.interrupt = interrupt;
    j.replay_of = by_id ? id : 0;
    j.refuse_existing = !overwrite;
    j.numbered = !out;
    if (cli_job_setup(&j)) { rc = err(NULL, LDM_USAGE); goto done; }
    /* no --device or LDM_BACKEND: the recorded backend (CUDA only when usable) */
    if (!j.backend && m.backend && !strcmp(m.backend, "cpu")) j.backend = "cpu";
    char written[4096] = "";
    j.hooks.written = note_written;   /* the verdict below names the file */
    j.hooks.user = written;
    if (strcmp(m.ldm_version, LDM_VERSION))
        ldm_log(1, "note: the image was made by ldm %s, this is ldm %s\n", m.ldm_version, LDM_VERSION);
    if (m.precision && !strcmp(m.precision, "bf16"))
        ldm_log(1, "note: the image was made with bf16 products (%s); replaying in bf16\n",
                m.isa ? m.isa : "instruction set not recorded");
    st = ldm_job_run(&j);
    cli_job_done(&j);
    free(copy);
    free(mcopy);
    if (st) { rc = err(NULL, st); goto done; }

    /* ---- the verdict ---- */
    char pix[160] = "";
    int same = 0;
    if (orig) {
        uint8_t *now = NULL;
        int nw, nh;
        if (ldm_png_read(written, &now, &nw, &nh, NULL, NULL) == 0)
            same = same_pixels(orig, ow, oh, now, nw, nh, pix, sizeof pix);
        free(now);
    }
    char label[4200];
    if (by_id) snprintf(label, sizeof label, "generation %lld", id);
    else snprintf(label, sizeof label, "%s", what);
    /* another backend (or another GPU) computes in another order: say so with the difference */
    int across = m.backend && m.backend[0] && j.backend_used[0] &&
                 (strcmp(m.backend, j.backend_used) ||
                  (!strcmp(m.backend, "cuda") && m.isa && strcmp(m.isa, j.isa_used)));
    if (across && strcmp(orig_sha, j.png_sha256))
        fprintf(stderr, "ldmgen replay: comparing across backends: %s was made on %s (%s), replayed on "
                "%s (%s); images agree only within the backends' rounding\n", label, m.backend,
                m.isa ? m.isa : "not recorded", j.backend_used, j.isa_used);
    if (!orig_sha[0]) {
        fprintf(stderr, "ldmgen replay: %s: generation %lld is '%s' and has no recorded PNG to compare with\n",
                written, id, status);
        rc = 1;
    } else if (!strcmp(orig_sha, j.png_sha256)) {
        if (cli_verbosity > 0)
            printf("%s: identical to %s (PNG bytes%s, sha256 %s)\n", written, label,
                   orig ? " and pixels" : "", orig_sha);
        rc = 0;
    } else if (same && strcmp(m.ldm_version, LDM_VERSION)) {
        /* another ldm version writes its own version into the metadata: the bytes differ,
         * the image does not */
        char *v = ldm_escape_controls(m.ldm_version);
        if (cli_verbosity > 0)
            printf("%s: the same pixels as %s (the PNG bytes differ only in the metadata: made by "
                   "ldm %s, replayed by ldm %s)\n", written, label, v, LDM_VERSION);
        free(v);
        rc = 0;
    } else {
        fprintf(stderr, "ldmgen replay: %s differs from %s: sha256 %s, recorded %s%s%s\n", written,
                label, j.png_sha256, orig_sha, pix[0] ? "; " : "", pix);
        rc = 1;
    }
done:
    free(orig);
    free(default_out);
    ldm_record_free(&m);
    return rc;
}
