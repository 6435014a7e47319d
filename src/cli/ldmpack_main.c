/* ldmpack_main.c - the ldmpack command: argument parsing only; the work is in pack.c.
 *
 *   ldmpack MODEL_DIR -o model.ldmb      pack a diffusers folder
 *   ldmpack --info [--json] model.ldmb   describe a bundle
 *   ldmpack --verify model.ldmb          check every checksum
 * Exit status: 0 success, 1 runtime or data error, 2 usage error.
 */
#include "app/pack.h"
#include "cli/cli.h"
#include "core/common.h"
#include "format/bundle.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static const char USAGE[] =
    "usage: ldmpack [options] MODEL_DIR -o OUTPUT.ldmb\n"
    "       ldmpack [options] --unet DIR --vae DIR ... -o OUTPUT.ldmb\n"
    "       ldmpack --info [--json] BUNDLE.ldmb\n"
    "       ldmpack --verify BUNDLE.ldmb\n"
    "\n"
    "Pack a diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/,\n"
    "tokenizer/, scheduler/) into one fp16 .ldmb bundle, or describe or verify a bundle.\n"
    "\n"
    "  -o, --output FILE      bundle to write (replaced only if packing succeeds)\n"
    "      --unet DIR         take the UNet from DIR (config.json + safetensors)\n"
    "      --vae DIR          take the VAE from DIR\n"
    "      --text-encoder DIR take the CLIP text encoder from DIR\n"
    "      --tokenizer DIR    take vocab.json, merges.txt, ... from DIR\n"
    "      --scheduler DIR    take scheduler_config.json from DIR\n"
    "      --clamp            clamp weights beyond the fp16 range to +-65504 (default: error)\n"
    "      --no-check         do not check the weights against the model configs\n"
    "      --random-weights   the folders hold configs only: make deterministic random\n"
    "                         weights (N(0, 0.02), norms 1, biases 0) for benchmarks\n"
    "      --info             describe BUNDLE: components, configs, parameters, sizes, hash\n"
    "      --json             with --info: print JSON\n"
    "      --verify           check every tensor checksum and the content hash of BUNDLE\n"
    "  -q, --quiet            print errors only\n"
    "  -v, --verbose          print more\n"
    "  -h, --help             print this help\n"
    "      --version          print the version\n"
    "\n"
    "Exit status: 0 success, 1 error in the data or the system, 2 usage error.\n"
    "See ldmpack(1) and ldmb(5).\n";

static int usage_error(const char *msg) {
    fprintf(stderr, "ldmpack: %s\n(try ldmpack --help)\n", msg);
    return 2;
}

int main(int argc, char **argv) {
    signal(SIGXFSZ, SIG_IGN);   /* a file size limit: write() fails with EFBIG, reported */
    enum { O_UNET = 256, O_VAE, O_TEXT, O_TOK, O_SCHED, O_CLAMP, O_NOCHECK, O_INFO, O_JSON, O_VERIFY, O_VERSION, O_RANDOM };
    static const struct option opts[] = {
        { "output", required_argument, 0, 'o' },     { "unet", required_argument, 0, O_UNET },
        { "vae", required_argument, 0, O_VAE },        { "text-encoder", required_argument, 0, O_TEXT },
        { "tokenizer", required_argument, 0, O_TOK },  { "scheduler", required_argument, 0, O_SCHED },
        { "clamp", no_argument, 0, O_CLAMP },          { "no-check", no_argument, 0, O_NOCHECK },
        { "info", no_argument, 0, O_INFO },            { "json", no_argument, 0, O_JSON },
        { "verify", no_argument, 0, O_VERIFY },        { "quiet", no_argument, 0, 'q' },
        { "verbose", no_argument, 0, 'v' },            { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, O_VERSION },      { "random-weights", no_argument, 0, O_RANDOM },
        { 0, 0, 0, 0 },
    };
    cli_init("ldmpack");
    signal(SIGXFSZ, SIG_IGN);   /* a file-size limit is a write error, not a kill */
    ldm_pack_opts po = { 0 };
    int info = 0, json = 0, verify = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:qvh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': po.output = optarg; break;
        case O_UNET: po.unet = optarg; break;
        case O_VAE: po.vae = optarg; break;
        case O_TEXT: po.text_encoder = optarg; break;
        case O_TOK: po.tokenizer = optarg; break;
        case O_SCHED: po.scheduler = optarg; break;
        case O_CLAMP: po.clamp = 1; break;
        case O_NOCHECK: po.no_model_check = 1; break;
        case O_RANDOM: po.random_weights = 1; break;
        case O_INFO: info = 1; break;
        case O_JSON: json = 1; break;
        case O_VERIFY: verify = 1; break;
        case 'q': cli_verbosity = 0; break;
        case 'v': cli_verbosity = 2; break;
        case 'h': fputs(USAGE, stdout); return 0;
        case O_VERSION: printf("ldmpack %s (bundle format %d)\n", LDM_VERSION, LDMB_FORMAT_VERSION); return 0;
        case ':': {
            char m[128];
            snprintf(m, sizeof m, "option %s needs an argument", argv[optind - 1]);
            return usage_error(m);
        }
        default: {
            char m[128];
            snprintf(m, sizeof m, "unknown option %s", argv[optind - 1]);
            return usage_error(m);
        }
        }
    }
    int nargs = argc - optind;
    if (info && verify) return usage_error("--info and --verify cannot be combined");
    if (json && !info) return usage_error("--json goes with --info");
    if (info || verify) {
        if (nargs != 1) return usage_error(info ? "--info takes one bundle" : "--verify takes one bundle");
        if (po.output) return usage_error("-o is for packing, not with --info/--verify");
        const char *path = argv[optind];
        int rc = info ? ldm_pack_info(path, json, stdout) : ldm_pack_verify(path, stdout);
        if (rc) { fprintf(stderr, "ldmpack: %s\n", ldm_last_error()); return 1; }
        return 0;
    }
    if (nargs > 1) return usage_error("more than one MODEL_DIR given");
    po.model_dir = nargs == 1 ? argv[optind] : NULL;
    if (!po.model_dir && !po.unet && !po.vae && !po.text_encoder && !po.tokenizer && !po.scheduler)
        return usage_error("no MODEL_DIR (or component folders) given");
    if (!po.output) return usage_error("no output file given (-o OUTPUT.ldmb)");
    if (ldm_pack(&po)) { fprintf(stderr, "ldmpack: %s\n", ldm_last_error()); return 1; }
    ldm_log(1, "wrote %s\n", po.output);
    return 0;
}
