/* ldmgen_main.c - the ldmgen command: parse and check the arguments, then call the
 * library (app/job.c runs the job: history, cache, PNG files, grid).  No model logic
 * lives here; this layer alone prints, reads the environment and chooses exit codes.
 *
 *   ldmgen [options] [--] "prompt"              generate image(s) or a grid
 *   ldmgen [options] --prompts FILE              every line of a prompt file (prompts.c)
 *   ldmgen tokenize [--bundle FILE] [--] "prompt" the text encoder's input: chunks, ids, weights
 *   ldmgen history ... / ldmgen show ID          the generation history (history.c)
 *   ldmgen history merge OUT.db IN.db...         histories into one (merge.c)
 *   ldmgen replay ID|IMAGE.png                   regenerate and compare (replay.c)
 *
 * A prompt equal to a subcommand's name is given after "--": ldmgen -- history.
 *
 * Exit status: 0 success, 1 runtime or data error (bundle, files, memory), 2 usage error,
 * 130 interrupted.  Every failure prints one line "ldmgen: ..." on stderr and leaves no
 * file behind under the final name (PNGs are written to a temporary name and renamed).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/grid.h"
#include "app/job.h"
#include "cli/cli.h"
#include "cli/history.h"
#include "cli/prompts.h"
#include "cli/replay.h"
#include "core/common.h"
#include "format/bundle.h"
#include "model/prompt.h"
#include "model/tokenizer.h"
#include "pipeline/pipeline.h"
#include "pipeline/scheduler.h"

static const char USAGE[] =
    "usage: ldmgen [options] [--] \"prompt\"\n"
    "       ldmgen [options] --prompts FILE [--shard K/N] [--force] [--fail-fast]\n"
    "       ldmgen tokenize [--bundle FILE] [--prompt-syntax S] [--] \"prompt\"\n"
    "       ldmgen history [--grep TEXT] [--since DATE] [--seed S] ... (ldmgen history --help)\n"
    "       ldmgen history merge OUT.db IN.db...\n"
    "       ldmgen show ID\n"
    "       ldmgen replay [-o FILE] [--bundle FILE] ID|IMAGE.png\n"
    "\n"
    "Generate an image from a text prompt with a Stable Diffusion bundle (.ldmb).\n"
    "\n"
    "      --bundle FILE        model bundle; default: $LDM_BUNDLE, else default.ldmb in\n"
    "                           ../share/ldm beside the program, the installed data\n"
    "                           folder, ./bundle or ../bundle beside the program\n"
    "  -o, --output FILE        PNG to write (default out.png, or out-N.png when taken); with\n"
    "                           -b N > 1 the files are FILE-0001.png ... FILE-000N.png; a\n"
    "                           pattern: {seed}, {prompt}, {id}, and with --prompts {index},\n"
    "                           {line}, {shard}; {index:05} pads with zeros\n"
    "      --overwrite          replace existing files (default: an existing -o is an error)\n"
    "      --threads N          CPU threads (default: OMP_NUM_THREADS, else the CPUs this\n"
    "                           process may use); the image is the same for any N\n"
    "      --device D           auto (default: CUDA when a GPU is usable, else the CPU), cpu or\n"
    "                           cuda (an error when no GPU is usable); overrides LDM_BACKEND\n"
    "      --precision P        fp32 (default: exact, as diffusers) or bf16 (products in\n"
    "                           bfloat16 on CPUs with AMX or AVX512_BF16, several times faster,\n"
    "                           images within 33 dB PSNR of fp32; elsewhere it says so and\n"
    "                           runs fp32); recorded, and replay uses it\n"
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
    "      --final-sigmas F     dpmpp_2m's last sigma: zero (diffusers >= 0.26), sigma_min, or\n"
    "                           v0.25 (diffusers 0.25); default: the bundle's final_sigmas_type,\n"
    "                           else zero\n"
    "      --clip-skip N        use the text encoder's N-th last layer, 1..12 (default 1)\n"
    "      --prompt-syntax S    a1111: AUTOMATIC1111's (word:1.2) (word) [word] \\( BREAK,\n"
    "                           prompts of any length in chunks of 75 tokens (default);\n"
    "                           plain: the text as it is, cut to 75 tokens (diffusers)\n"
    "      --grid g=LIST        guidance values along the rows of a grid image, e.g. g=1,3,7.5\n"
    "      --grid n=LIST        step counts along its columns, e.g. n=10,25 (one seed for all)\n"
    "      --init-img FILE      image to image from this PNG or JPEG (alpha is composited\n"
    "                           on white); its size unless -W/-H, rounded down to 8\n"
    "      --strength S         how much of the image is repainted, 0 < S <= 1 (default 0.8;\n"
    "                           1 with --mask)\n"
    "      --mask MASK          inpainting: repaint where MASK is white, keep where black\n"
    "                           (grey >= 128 counts as white); resized to the image's size\n"
    "      --no-image-copy      do not keep a copy of the init image (and mask) beside the\n"
    "                           history\n"
    "      --save-latent FILE   also write the final latent (mean of its channels) as a\n"
    "                           grayscale PNG; numbered like the images with -b N\n"
    "      --prompts FILE       generate every line of FILE: a prompt a line, or JSON lines\n"
    "                           {\"prompt\": ..., \"seed\": ..., \"steps\": ...}; these options are\n"
    "                           the defaults; seeds --seed + index (default -o\n"
    "                           {index:05}-{seed}.png); lines already done are skipped\n"
    "      --shard K/N          run the lines whose index is K mod N (default: from\n"
    "                           SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else all)\n"
    "      --shard-count N      the number of shards of JOB_COMPLETION_INDEX (or LDM_SHARD_COUNT)\n"
    "      --force              redo every line, replacing its files\n"
    "      --fail-fast          stop at the first line that fails\n"
    "      --db PATH            history database (default: $LDM_DB, else\n"
    "                           $XDG_DATA_HOME/ldm/ldm.db, else ~/.local/share/ldm/ldm.db);\n"
    "                           {shard} in PATH is the shard number\n"
    "      --no-history         record nothing in the history\n"
    "      --require-history    exit 1 when the history cannot be recorded\n"
    "      --no-cache           do not read or write the prompt-embedding cache\n"
    "      --cache-max-mb N     embedding cache size cap in MiB (default 256)\n"
    "  -q, --quiet              print errors only\n"
    "  -v, --verbose            print timings and details\n"
    "  -h, --help               print this help\n"
    "      --version            print the version\n"
    "\n"
    "Environment: LDM_BUNDLE (default bundle), LDM_DB (history database),\n"
    "LDM_BACKEND=cpu|cuda (default: CUDA when a GPU is usable), LDM_SHARD_COUNT.\n"
    "Exit status: 0 success, 1 runtime error (with --prompts: a line failed), 2 usage\n"
    "error, 130 interrupted.\n"
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

/* The current library error as an exit code, printed. */
static int fail(ldm_status st) { return cli_exit("ldmgen", st, ldm_last_error()); }

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

/* ---- interrupt: SIGINT/SIGTERM set a flag the pipeline checks between steps ---- */

static volatile int interrupted;
static void on_signal(int sig) { (void)sig; interrupted = 1; }

static void catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---- ldmgen tokenize ---- */

/* "plain" / "a1111" -> LDM_SYNTAX_*, or -1 after a usage message. */
static int parse_syntax(const char *s) {
    int v = ldm_prompt_syntax_from_name(s);
    if (v < 0) usage_error("prompt syntax \"%s\": expected a1111 or plain", s);
    return v;
}

/* The A1111 syntax's chunks: per chunk, one line per token (position, id, weight, the
 * token's text), runs of three or more equal (id, weight) on one line (the padding). */
static void print_chunks(const ldm_tokenizer *tok, const ldm_prompt_tokens *pt) {
    printf("%d chunk%s of %d ids, %d tokens\n", pt->n_chunks, pt->n_chunks == 1 ? "" : "s", pt->T,
           pt->token_count);
    for (int c = 0; c < pt->n_chunks; c++) {
        printf("chunk %d: %d token%s\n", c + 1, pt->chunk_tokens[c], pt->chunk_tokens[c] == 1 ? "" : "s");
        const int32_t *id = pt->ids + (size_t)c * pt->T;
        const float *w = pt->weights + (size_t)c * pt->T;
        for (int k = 0; k < pt->T;) {
            int e = k + 1;
            while (e < pt->T && id[e] == id[k] && w[e] == w[k]) e++;
            if (e - k < 3) e = k + 1;
            char pos[32];
            if (e - k > 1) snprintf(pos, sizeof pos, "%d-%d", k, e - 1);
            else snprintf(pos, sizeof pos, "%d", k);
            char *text = ldm_tokenizer_token_text(tok, id[k]);
            char *shown = ldm_escape_controls(text ? text : "?");
            printf("%7s %6d  %-8g  %s\n", pos, (int)id[k], (double)w[k], shown);
            free(shown);
            free(text);
            k = e;
        }
    }
}

static int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"bundle", required_argument, 0, 'B'}, {"prompt-syntax", required_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *bundle_opt = NULL;
    int c, syntax = LDM_SYNTAX_A1111;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'B': bundle_opt = optarg; break;
        case 'S': if ((syntax = parse_syntax(optarg)) < 0) return 2; break;
        case 'h': fputs("usage: ldmgen tokenize [--bundle FILE] [--prompt-syntax a1111|plain] [--] \"prompt\"\n"
                        "Print what the text encoder gets for the prompt.  a1111 (default): the\n"
                        "number of chunks and of tokens, then for each chunk a line per position:\n"
                        "position (a range for a run of equal ids), id, weight, token (\"</w>\" ends\n"
                        "a word).  plain: the input ids (BOS, tokens, EOS, padding) on one line.\n",
                        stdout);
                  return 0;
        case ':': return usage_error("option %s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (argc - optind != 1)
        return usage_error("tokenize: expected one prompt argument, got %d", argc - optind);
    char path[4096];
    if (cli_bundle_path(bundle_opt, path, sizeof path)) return fail(LDM_RUNTIME);
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return fail(ldm_last_status());
    ldm_tokenizer *tok = ldm_bundle_tokenizer(b);
    if (!tok) { ldm_bundle_close(b); return fail(LDM_DATA); }
    int rc = 0;
    ldm_prompt_tokens pt;
    if (ldm_prompt_tokenize(tok, argv[optind], syntax, &pt) < 0) {
        ldm_error_prefix("prompt");
        rc = fail(LDM_USAGE);
    } else if (syntax == LDM_SYNTAX_PLAIN) {
        if (pt.truncated) ldm_warn("the prompt is longer than %d tokens; it was truncated", pt.T - 2);
        for (int i = 0; i < pt.T; i++) printf(i ? " %d" : "%d", (int)pt.ids[i]);
        printf("\n");
    } else {
        print_chunks(tok, &pt);
    }
    ldm_prompt_tokens_free(&pt);
    ldm_tokenizer_free(tok);
    ldm_bundle_close(b);
    return rc;
}

/* ---- ldmgen ---- */

/* OpenMP threads that wait for work sleep instead of spinning (OMP_WAIT_POLICY=passive):
 * on a machine where another process holds a core, spinning threads take the time of the
 * one doing the work, and a 2-thread run became slower than a 1-thread one.  libgomp reads
 * the variable when it is loaded, before main, so ldmgen sets it and starts itself again
 * (once: the variable is then set); a user's own OMP_WAIT_POLICY is kept. */
static void passive_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("LDM_NO_REEXEC")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* no /proc: go on with the default policy */
}

int main(int argc, char **argv) {
    passive_openmp(argv);
    cli_init("ldmgen");
    signal(SIGXFSZ, SIG_IGN);   /* a file-size limit is a write error, not a kill */
    if (argc > 1 && !strcmp(argv[1], "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "history")) return cli_history(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "show")) return cli_show(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "replay")) {
        catch_signals();
        return cli_replay(argc - 1, argv + 1, &interrupted);
    }

    enum { O_BUNDLE = 256, O_SEED, O_NEG, O_SCHED, O_KARRAS, O_ETA, O_SPACING, O_FINAL, O_CLIPSKIP,
           O_NOHIST, O_VERSION, O_DB, O_NOCACHE, O_CACHEMAX, O_REQHIST, O_GRID, O_LATENT,
           O_INIT, O_STRENGTH, O_NOCOPY, O_MASK, O_SYNTAX, O_THREADS, O_PRECISION, O_DEVICE,
           O_PROMPTS, O_SHARD, O_SHARDCOUNT, O_FORCE, O_FAILFAST, O_OVERWRITE };
    static const struct option opts[] = {
        {"bundle", required_argument, 0, O_BUNDLE},   {"output", required_argument, 0, 'o'},
        {"guidance", required_argument, 0, 'g'},      {"steps", required_argument, 0, 'n'},
        {"seed", required_argument, 0, O_SEED},       {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},        {"batch", required_argument, 0, 'b'},
        {"negative", required_argument, 0, O_NEG},    {"scheduler", required_argument, 0, O_SCHED},
        {"karras", no_argument, 0, O_KARRAS},         {"eta", required_argument, 0, O_ETA},
        {"timestep-spacing", required_argument, 0, O_SPACING},
        {"final-sigmas", required_argument, 0, O_FINAL},
        {"clip-skip", required_argument, 0, O_CLIPSKIP},
        {"prompt-syntax", required_argument, 0, O_SYNTAX},
        {"no-history", no_argument, 0, O_NOHIST},     {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},             {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},       {"db", required_argument, 0, O_DB},
        {"no-cache", no_argument, 0, O_NOCACHE},      {"cache-max-mb", required_argument, 0, O_CACHEMAX},
        {"require-history", no_argument, 0, O_REQHIST}, {"grid", required_argument, 0, O_GRID},
        {"save-latent", required_argument, 0, O_LATENT},
        {"init-img", required_argument, 0, O_INIT},   {"strength", required_argument, 0, O_STRENGTH},
        {"no-image-copy", no_argument, 0, O_NOCOPY},  {"mask", required_argument, 0, O_MASK},
        {"prompts", required_argument, 0, O_PROMPTS}, {"shard", required_argument, 0, O_SHARD},
        {"shard-count", required_argument, 0, O_SHARDCOUNT}, {"force", no_argument, 0, O_FORCE},
        {"fail-fast", no_argument, 0, O_FAILFAST},    {"overwrite", no_argument, 0, O_OVERWRITE},
        {"threads", required_argument, 0, O_THREADS},
        {"precision", required_argument, 0, O_PRECISION},
        {"device", required_argument, 0, O_DEVICE},
        {0, 0, 0, 0},
    };
    ldm_job job;
    ldm_job_init(&job);
    ldm_gen_params *prm = &job.prm;
    const char *bundle_opt = NULL;
    int have_g = 0, have_n = 0, have_strength = 0, have_o = 0, overwrite = 0, c;
    cli_prompts_opts po = {0};
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:g:n:W:H:b:qvh", opts, NULL)) != -1) {
        const char *name = argv[optind - 1];
        switch (c) {
        case O_BUNDLE: bundle_opt = optarg; break;
        case 'o':
            if (!*optarg) return usage_error("-o: empty file name");
            job.output = optarg;
            have_o = 1;
            break;
        case 'g':
            if (parse_double(optarg, 0, 100, &prm->guidance))
                return usage_error("guidance scale \"%s\": expected a number from 0 to 100", optarg);
            break;
        case 'n':
            if (parse_int(optarg, 1, 1000, &prm->steps))
                return usage_error("steps \"%s\": expected an integer from 1 to 1000", optarg);
            break;
        case O_SEED:
            if (parse_seed(optarg, &prm->seed))
                return usage_error("seed \"%s\": expected an integer from 0 to "
                                   "18446744073709551615", optarg);
            job.have_seed = 1;
            break;
        case 'W': case 'H': {
            int v;
            if (parse_int(optarg, 8, 8192, &v) || v % 8)
                return usage_error("%s \"%s\": expected a multiple of 8 from 8 to 8192",
                                   c == 'W' ? "width" : "height", optarg);
            if (c == 'W') prm->width = v; else prm->height = v;
            break;
        }
        case 'b':
            if (parse_int(optarg, 1, 64, &prm->batch))
                return usage_error("batch \"%s\": expected an integer from 1 to 64", optarg);
            break;
        case O_NEG: prm->negative = optarg; break;
        case O_SCHED:
            if ((prm->scheduler = ldm_sched_kind_from_name(optarg)) < 0)
                return usage_error("unknown scheduler \"%s\": expected ddim, ddpm, pndm, euler, "
                                   "euler_a or dpmpp_2m", optarg);
            break;
        case O_KARRAS: prm->karras = 1; break;
        case O_ETA:
            if (parse_double(optarg, 0, 1, &prm->eta))
                return usage_error("eta \"%s\": expected a number from 0 to 1", optarg);
            break;
        case O_SPACING:
            if ((prm->spacing = ldm_spacing_from_name(optarg)) < 0)
                return usage_error("timestep spacing \"%s\": expected leading, trailing or "
                                   "linspace", optarg);
            break;
        case O_FINAL:
            if ((prm->final_sigmas = ldm_final_sigmas_from_name(optarg)) < 0)
                return usage_error("final sigmas \"%s\": expected zero, sigma_min or v0.25", optarg);
            break;
        case O_CLIPSKIP:
            if (parse_int(optarg, 1, 12, &prm->clip_skip))
                return usage_error("clip skip \"%s\": expected an integer from 1 to 12", optarg);
            break;
        case O_SYNTAX:
            if ((prm->prompt_syntax = parse_syntax(optarg)) < 0) return 2;
            break;
        case O_NOHIST: job.no_history = 1; break;
        case O_REQHIST: job.require_history = 1; break;
        case O_DB:
            if (!*optarg) return usage_error("--db: empty path");
            job.db_path = optarg;
            break;
        case O_NOCACHE: job.no_cache = 1; break;
        case O_CACHEMAX:
            if (parse_double(optarg, 0, 1048576, &job.cache_max_mb))
                return usage_error("cache size \"%s\": expected a number of MiB from 0 to 1048576",
                                   optarg);
            break;
        case O_GRID: {
            char axis;
            double v[LDM_GRID_MAX];
            int k = ldm_grid_parse_axis(optarg, &axis, v, LDM_GRID_MAX);
            if (k < 0) return usage_error("%s", ldm_last_error());
            if (axis == 'g') {
                if (have_g++) return usage_error("--grid g=... given twice");
                job.grid.rows = k;
                memcpy(job.grid.guidance, v, sizeof(double) * (size_t)k);
            } else {
                if (have_n++) return usage_error("--grid n=... given twice");
                job.grid.cols = k;
                for (int i = 0; i < k; i++) job.grid.steps[i] = (int)v[i];
            }
            break;
        }
        case O_INIT:
            if (!*optarg) return usage_error("--init-img: empty file name");
            job.init_image = optarg;
            break;
        case O_STRENGTH:
            if (parse_double(optarg, 0, 1, &prm->strength) || !(prm->strength > 0))
                return usage_error("strength \"%s\": expected a number above 0 and at most 1", optarg);
            have_strength = 1;
            break;
        case O_NOCOPY: job.no_image_copy = 1; break;
        case O_MASK:
            if (!*optarg) return usage_error("--mask: empty file name");
            job.mask_image = optarg;
            break;
        case O_LATENT:
            if (!*optarg) return usage_error("--save-latent: empty file name");
            job.latent_output = optarg;
            break;
        case O_PROMPTS:
            if (!*optarg) return usage_error("--prompts: empty file name");
            po.file = optarg;
            break;
        case O_SHARD: po.shard = optarg; break;
        case O_SHARDCOUNT: {
            int v;
            if (parse_int(optarg, 1, 1000000, &v))
                return usage_error("--shard-count \"%s\": expected a whole number from 1 to 1000000", optarg);
            po.shard_count = v;
            break;
        }
        case O_FORCE: po.force = 1; break;
        case O_FAILFAST: po.fail_fast = 1; break;
        case O_OVERWRITE: overwrite = 1; break;
        case O_THREADS:
            if (parse_int(optarg, 1, 1024, &cli_threads))
                return usage_error("threads \"%s\": expected a whole number from 1 to 1024", optarg);
            break;
        case O_PRECISION:
            if (!strcmp(optarg, "fp32")) cli_precision = LDM_PRECISION_FP32;
            else if (!strcmp(optarg, "bf16")) cli_precision = LDM_PRECISION_BF16;
            else return usage_error("precision \"%s\": expected fp32 or bf16", optarg);
            break;
        case O_DEVICE:
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda"))
                return usage_error("device \"%s\": expected auto, cpu or cuda", optarg);
            cli_device = optarg;
            break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case 'h': fputs(USAGE, stdout); return 0;
        case O_VERSION: printf("ldmgen (ldm) %s\n", LDM_VERSION); return 0;
        case ':': return usage_error("option %s needs a value", name);
        default:
            if (optopt && optopt < 256) return usage_error("unknown option -%c", optopt);
            return usage_error("unknown option %s", name);
        }
    }
    if (po.file) {
        if (argc - optind > 0)
            return usage_error("--prompts takes the prompts from the file; no prompt argument (got \"%s\")",
                               argv[optind]);
        if (have_g || have_n) return usage_error("--grid does not apply with --prompts");
        prm->prompt = "";   /* each line's */
    } else {
        if (po.shard || po.shard_count || po.force || po.fail_fast)
            return usage_error("%s applies to --prompts FILE", po.shard ? "--shard" : po.shard_count ?
                               "--shard-count" : po.force ? "--force" : "--fail-fast");
        if (argc - optind == 0) return usage_error("no prompt given");
        if (argc - optind > 1)
            return usage_error("expected one prompt argument, got %d (quote the prompt)",
                               argc - optind);
        prm->prompt = argv[optind];
    }
    /* never replace a file unless asked; the default name is numbered instead */
    job.refuse_existing = !overwrite;
    job.numbered = !have_o && !po.file;
    if (po.file && !have_o) job.output = NULL;
    if (have_strength && !job.init_image)
        return usage_error("--strength goes with --init-img (image to image)");
    if (job.mask_image && !job.init_image)
        return usage_error("--mask goes with --init-img (inpainting: the image to repaint)");
    if (job.mask_image && !have_strength) prm->strength = 1.0;   /* diffusers' inpainting default */
    if (job.no_history && job.require_history)
        return usage_error("--no-history and --require-history contradict each other");
    /* one grid axis alone: the other takes the -g / -n value */
    if (have_g || have_n) {
        if (prm->batch > 1) return usage_error("--grid makes one image per cell; -b does not apply");
        if (!have_g) { job.grid.rows = 1; job.grid.guidance[0] = prm->guidance; }
        if (!have_n) { job.grid.cols = 1; job.grid.steps[0] = prm->steps; }
    }
    char bundle[4096], db[4096];
    if (cli_bundle_path(bundle_opt, bundle, sizeof bundle)) return fail(LDM_RUNTIME);
    job.bundle_path = bundle;
    if (!job.no_history || !job.no_cache) {
        if (cli_db_path(job.db_path, db, sizeof db) == 0) job.db_path = db;
        else if (!job.no_history) ldm_warn("history not recorded: %s", ldm_last_error());
    }
    if (cli_job_setup(&job)) return fail(LDM_USAGE);
    job.interrupt = &interrupted;
    catch_signals();
    if (po.file) return cli_prompts(&job, &po);
    ldm_status st = ldm_job_run(&job);
    cli_job_done(&job);
    return fail(st);
}
