/* ldmgen_main.c - the ldmgen command: parse and check the arguments, call the library
 * (pipeline.c), write the PNG files.  No model logic lives here.
 *
 *   ldmgen [options] [--] "prompt"              generate image(s)
 *   ldmgen tokenize [--bundle FILE] [--] "prompt" print the 77 input ids
 *   ldmgen history ... / ldmgen show ID          the generation history (history.c)
 *
 * Exit status: 0 success, 1 runtime or data error (bundle, files, memory), 2 usage error,
 * 130 interrupted.  Every failure prints one line "ldmgen: ..." on stderr and leaves no
 * file behind under the final name (PNGs are written to a temporary name and renamed).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bundle.h"
#include "common.h"
#include "history.h"
#include "ops.h"
#include "pipeline.h"
#include "png_io.h"
#include "scheduler.h"
#include "tokenizer.h"

#ifndef LDM_DATADIR
#define LDM_DATADIR "/usr/local/share/ldm"
#endif
#define DEFAULT_BUNDLE_NAME "default.ldmb"

static const char USAGE[] =
    "usage: ldmgen [options] [--] \"prompt\"\n"
    "       ldmgen tokenize [--bundle FILE] [--] \"prompt\"\n"
    "\n"
    "Generate an image from a text prompt with a Stable Diffusion bundle (.ldmb).\n"
    "\n"
    "      --bundle FILE        model bundle; default: $LDM_BUNDLE, else\n"
    "                           " LDM_DATADIR "/" DEFAULT_BUNDLE_NAME " if it exists,\n"
    "                           else ./bundle/" DEFAULT_BUNDLE_NAME "\n"
    "  -o, --output FILE        PNG to write (default out.png); with -b N > 1 the files are\n"
    "                           FILE-0001.png ... FILE-000N.png (stem of FILE + number)\n"
    "  -g, --guidance G         classifier-free guidance scale, 0..100 (default 7.5;\n"
    "                           <= 1 turns guidance off)\n"
    "  -n, --steps N            denoising steps, 1..1000 (default 50)\n"
    "      --seed S             seed, 0..18446744073709551615 (default: random, printed)\n"
    "  -W, --width W            width in pixels, a multiple of 8 (default: the model's)\n"
    "  -H, --height H           height in pixels, a multiple of 8 (default: the model's)\n"
    "  -b, --batch N            images, 1..64, with seeds S, S+1, ... (default 1)\n"
    "      --negative TEXT      negative prompt (default empty)\n"
    "      --scheduler NAME     ddim, ddpm, pndm, euler, euler_a or dpmpp_2m\n"
    "                           (default: the bundle's scheduler)\n"
    "      --karras             Karras sigmas (euler and dpmpp_2m)\n"
    "      --eta E              DDIM eta, 0..1 (default 0)\n"
    "      --timestep-spacing S leading, trailing or linspace (default: the bundle's)\n"
    "      --clip-skip N        use the text encoder's N-th last layer, 1..12 (default 1)\n"
    "      --no-history         record nothing in the history\n"
    "  -q, --quiet              print errors only\n"
    "  -v, --verbose            print timings and details\n"
    "  -h, --help               print this help\n"
    "      --version            print the version\n"
    "\n"
    "Environment: LDM_BUNDLE (default bundle), LDM_BACKEND=cpu (do not use the GPU).\n"
    "Exit status: 0 success, 1 runtime error, 2 usage error, 130 interrupted.\n"
    "See ldmgen(1).\n";

static int usage_error(const char *fmt, ...) LDM_PRINTF(1, 2);
static int usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("ldmgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (try ldmgen --help)\n", stderr);
    return 2;
}

static int runtime_error(const char *msg) {
    fprintf(stderr, "ldmgen: %s\n", msg);
    return 1;
}

/* ---- argument values ---- */

/* A whole-string integer in [lo, hi]. */
static int parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

/* A whole-string finite number in [lo, hi]. */
static int parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Decimal digits only, at most 2^64 - 1. */
static int parse_seed(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s) return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static uint64_t random_seed(void) {
    uint32_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, &r, sizeof r) != (ssize_t)sizeof r) r = 0;
        close(fd);
    }
    if (!r) r = (uint32_t)time(NULL) ^ (uint32_t)getpid() * 2654435761u;
    return r;   /* 32 bits: short enough to type back */
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* --bundle, else $LDM_BUNDLE, else the installed default, else ./bundle/default.ldmb. */
static const char *resolve_bundle(const char *opt) {
    if (opt) return opt;
    const char *env = getenv("LDM_BUNDLE");
    if (env && *env) return env;
    if (file_exists(LDM_DATADIR "/" DEFAULT_BUNDLE_NAME)) return LDM_DATADIR "/" DEFAULT_BUNDLE_NAME;
    return "bundle/" DEFAULT_BUNDLE_NAME;
}

/* The file name stem of a path: "/a/b/sd15.ldmb" -> "sd15" (malloc'd). */
static char *path_stem(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *s = ldm_xstrdup(base);
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = 0;
    return s;
}

/* Output name of image i of n: n == 1 -> out; else "<out without .png>-%04d.png". */
static char *output_name(const char *out, int i, int n) {
    if (n == 1) return ldm_xstrdup(out);
    size_t L = strlen(out);
    const char *slash = strrchr(out, '/');
    const char *dot = strrchr(out, '.');
    if (dot && (!slash || dot > slash + 1) && !strcmp(dot, ".png")) L = (size_t)(dot - out);
    char *s = ldm_xmalloc(L + 16);
    snprintf(s, L + 16, "%.*s-%04d.png", (int)L, out, i + 1);
    return s;
}

/* The folder of `path` must exist and be writable, and path must not be a folder. */
static int check_output(const char *path) {
    struct stat st;
    if (!*path) return ldm_error("output file name is empty");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return ldm_error("%s: is a folder; give a file name with -o", path);
    char *dir = ldm_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int rc = 0;
    if (stat(dir, &st) != 0)
        rc = ldm_error("%s: folder %s does not exist", path, dir);
    else if (!S_ISDIR(st.st_mode))
        rc = ldm_error("%s: %s is not a folder", path, dir);
    else if (access(dir, W_OK | X_OK) != 0)
        rc = ldm_error("%s: folder %s is not writable", path, dir);
    free(dir);
    return rc;
}

/* ---- progress and interrupt ---- */

static volatile int interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

typedef struct { double start; int shown; } progress_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress(void *user, int step, int total) {
    progress_state *ps = user;
    const int width = 30;
    int fill = (int)((long)step * width / total);
    double el = now_s() - ps->start;
    fprintf(stderr, "\r%4d/%-4d [", step, total);
    for (int i = 0; i < width; i++) fputc(i < fill ? '=' : ' ', stderr);
    fprintf(stderr, "] %.2f s/step", el / step);
    if (step == total) fputc('\n', stderr);
    fflush(stderr);
    ps->shown = step != total;
}

static const ldm_backend *pick_backend(void) {
    const char *env = getenv("LDM_BACKEND");
    if (env && !strcmp(env, "cpu")) return &ldm_backend_cpu;
    const ldm_backend *cuda = ldm_backend_cuda();
    return cuda ? cuda : &ldm_backend_cpu;
}

/* ---- ldmgen tokenize ---- */

static int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"bundle", required_argument, 0, 'B'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *bundle_opt = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'B': bundle_opt = optarg; break;
        case 'h': fputs("usage: ldmgen tokenize [--bundle FILE] [--] \"prompt\"\n"
                        "Print the prompt's input ids (BOS, tokens, EOS, padding), space-separated.\n",
                        stdout);
                  return 0;
        case ':': return usage_error("option %s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (argc - optind != 1)
        return usage_error("tokenize: expected one prompt argument, got %d", argc - optind);
    const char *path = resolve_bundle(bundle_opt);
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return runtime_error(ldm_last_error());
    ldm_tokenizer *tok = ldm_bundle_tokenizer(b);
    if (!tok) { ldm_bundle_close(b); return runtime_error(ldm_last_error()); }
    int T = ldm_tokenizer_get_info(tok).max_length;
    int32_t *ids = ldm_xmalloc(sizeof(int32_t) * (size_t)T);
    int trunc = 0, rc = 0;
    if (ldm_tokenize(tok, argv[optind], ids, T, &trunc) < 0) {
        rc = runtime_error(ldm_last_error());
    } else {
        if (trunc) ldm_warn("the prompt is longer than %d tokens; it was truncated", T - 2);
        for (int i = 0; i < T; i++) printf(i ? " %d" : "%d", (int)ids[i]);
        printf("\n");
    }
    free(ids);
    ldm_tokenizer_free(tok);
    ldm_bundle_close(b);
    return rc;
}

/* ---- ldmgen ---- */

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "history")) return ldm_cmd_history(argc - 1, argv + 1, NULL);
    if (argc > 1 && !strcmp(argv[1], "show")) return ldm_cmd_show(argc - 1, argv + 1, NULL);

    enum { O_BUNDLE = 256, O_SEED, O_NEG, O_SCHED, O_KARRAS, O_ETA, O_SPACING, O_CLIPSKIP,
           O_NOHIST, O_VERSION };
    static const struct option opts[] = {
        {"bundle", required_argument, 0, O_BUNDLE},   {"output", required_argument, 0, 'o'},
        {"guidance", required_argument, 0, 'g'},      {"steps", required_argument, 0, 'n'},
        {"seed", required_argument, 0, O_SEED},       {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},        {"batch", required_argument, 0, 'b'},
        {"negative", required_argument, 0, O_NEG},    {"scheduler", required_argument, 0, O_SCHED},
        {"karras", no_argument, 0, O_KARRAS},         {"eta", required_argument, 0, O_ETA},
        {"timestep-spacing", required_argument, 0, O_SPACING},
        {"clip-skip", required_argument, 0, O_CLIPSKIP},
        {"no-history", no_argument, 0, O_NOHIST},     {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},             {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},       {0, 0, 0, 0},
    };
    ldm_gen_params prm = ldm_gen_params_default();
    const char *bundle_opt = NULL, *out = "out.png";
    int have_seed = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:g:n:W:H:b:qvh", opts, NULL)) != -1) {
        const char *name = argv[optind - 1];
        switch (c) {
        case O_BUNDLE: bundle_opt = optarg; break;
        case 'o': out = optarg; break;
        case 'g':
            if (parse_double(optarg, 0, 100, &prm.guidance))
                return usage_error("guidance scale \"%s\": expected a number from 0 to 100", optarg);
            break;
        case 'n':
            if (parse_int(optarg, 1, 1000, &prm.steps))
                return usage_error("steps \"%s\": expected an integer from 1 to 1000", optarg);
            break;
        case O_SEED:
            if (parse_seed(optarg, &prm.seed))
                return usage_error("seed \"%s\": expected an integer from 0 to "
                                   "18446744073709551615", optarg);
            have_seed = 1;
            break;
        case 'W': case 'H': {
            int v;
            if (parse_int(optarg, 8, 8192, &v) || v % 8)
                return usage_error("%s \"%s\": expected a multiple of 8 from 8 to 8192",
                                   c == 'W' ? "width" : "height", optarg);
            if (c == 'W') prm.width = v; else prm.height = v;
            break;
        }
        case 'b':
            if (parse_int(optarg, 1, 64, &prm.batch))
                return usage_error("batch \"%s\": expected an integer from 1 to 64", optarg);
            break;
        case O_NEG: prm.negative = optarg; break;
        case O_SCHED:
            if ((prm.scheduler = ldm_sched_kind_from_name(optarg)) < 0)
                return usage_error("unknown scheduler \"%s\": expected ddim, ddpm, pndm, euler, "
                                   "euler_a or dpmpp_2m", optarg);
            break;
        case O_KARRAS: prm.karras = 1; break;
        case O_ETA:
            if (parse_double(optarg, 0, 1, &prm.eta))
                return usage_error("eta \"%s\": expected a number from 0 to 1", optarg);
            break;
        case O_SPACING:
            if ((prm.spacing = ldm_spacing_from_name(optarg)) < 0)
                return usage_error("timestep spacing \"%s\": expected leading, trailing or "
                                   "linspace", optarg);
            break;
        case O_CLIPSKIP:
            if (parse_int(optarg, 1, 12, &prm.clip_skip))
                return usage_error("clip skip \"%s\": expected an integer from 1 to 12", optarg);
            break;
        case O_NOHIST: break;   /* nothing is recorded yet */
        case 'q': ldm_verbosity = 0; break;
        case 'v': ldm_verbosity = 2; break;
        case 'h': fputs(USAGE, stdout); return 0;
        case O_VERSION: printf("ldmgen (ldm) %s\n", LDM_VERSION); return 0;
        case ':': return usage_error("option %s needs a value", name);
        default:
            if (optopt && optopt < 256) return usage_error("unknown option -%c", optopt);
            return usage_error("unknown option %s", name);
        }
    }
    if (argc - optind == 0) return usage_error("no prompt given");
    if (argc - optind > 1)
        return usage_error("expected one prompt argument, got %d (quote the prompt)",
                           argc - optind);
    prm.prompt = argv[optind];

    /* ---- the bundle and the choices that depend on it ---- */
    const char *path = resolve_bundle(bundle_opt);
    ldm_log(2, "bundle: %s\n", path);
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return runtime_error(ldm_last_error());
    ldm_sched_config sc;
    if (ldm_gen_check_bundle(b, &prm, &sc, NULL, NULL)) {
        /* a config the library cannot read is the bundle's fault, the rest is ours */
        int data = strstr(ldm_last_error(), ".json") != NULL;
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_bundle_close(b);
        return data ? runtime_error(msg) : usage_error("%s", msg);
    }
    int n_out = prm.batch;
    char **names = ldm_xcalloc((size_t)n_out, sizeof *names);
    for (int i = 0; i < n_out; i++) names[i] = output_name(out, i, n_out);
    int rc = 1;
    ldm_pipeline *p = NULL;
    ldm_gen_result res;
    memset(&res, 0, sizeof res);
    for (int i = 0; i < n_out; i++)
        if (check_output(names[i])) { runtime_error(ldm_last_error()); goto done_bundle; }
    char *model_hash = ldm_xstrdup(ldm_bundle_hash(b));
    char *model_name = path_stem(path);

    /* ---- models ---- */
    const ldm_backend *be = pick_backend();
    ldm_log(2, "backend: %s\n", be->name);
    double t_load = now_s();
    p = ldm_pipeline_new(b, be);
    b = NULL;   /* owned by the pipeline now */
    if (!p) { runtime_error(ldm_last_error()); goto done; }
    ldm_log(2, "models loaded in %.2f s\n", now_s() - t_load);
    if (!have_seed) {
        prm.seed = random_seed();
        ldm_log(1, "seed: %llu\n", (unsigned long long)prm.seed);
    }

    /* ---- generate ---- */
    progress_state ps = {now_s(), 0};
    if (ldm_verbosity > 0 && isatty(2)) {
        prm.progress = progress;
        prm.progress_user = &ps;
    }
    prm.interrupt = &interrupted;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int g = ldm_generate(p, &prm, &res);
    if (ps.shown) fputc('\n', stderr);
    if (g) {
        if (res.interrupted) {
            fprintf(stderr, "ldmgen: interrupted; nothing written\n");
            rc = 130;
        } else {
            runtime_error(ldm_last_error());
        }
        goto done;
    }
    if (res.prompt_truncated)
        ldm_warn("the prompt is longer than %d tokens; the rest was truncated",
                 ldm_pipeline_text_length(p) - 2);
    if (res.negative_truncated)
        ldm_warn("the negative prompt is longer than %d tokens; the rest was truncated",
                 ldm_pipeline_text_length(p) - 2);

    /* ---- write ---- */
    size_t img_bytes = (size_t)res.width * res.height * 3;
    for (int i = 0; i < n_out; i++) {
        char *params = ldm_a1111_parameters(&prm, &res, i, model_hash, model_name);
        ldm_png_text text = {"parameters", params};
        int w = ldm_png_write(names[i], res.rgb + i * img_bytes, res.width, res.height, &text, 1);
        free(params);
        if (w) { runtime_error(ldm_last_error()); goto done; }
        if (ldm_verbosity > 0) printf("%s\n", names[i]);
    }
    ldm_log(2, "%s, %d steps (%d UNet evaluations), %dx%d, seed %llu\n",
            ldm_sched_a1111_name(&res.sched), prm.steps, res.unet_evaluations, res.width,
            res.height, (unsigned long long)prm.seed);
    ldm_log(2, "time: text %.2f s, sampling %.2f s, decode %.2f s, total %.2f s\n", res.t_text,
            res.t_sampling, res.t_decode, res.t_total);
    rc = 0;
done:
    free(model_hash);
    free(model_name);
done_bundle:
    ldm_gen_result_free(&res);
    ldm_pipeline_close(p);
    ldm_bundle_close(b);
    for (int i = 0; i < n_out; i++) free(names[i]);
    free(names);
    return rc;
}
