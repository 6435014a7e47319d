/* pipeline.c - text to image (StableDiffusionPipeline): tokenize, encode, denoise with a
 * scheduler, decode, convert to 8-bit RGB.  See pipeline.h for the data flow.
 *
 * Matching diffusers 0.25.1 details kept here on purpose:
 * - the negative prompt is encoded from the last layer even when clip skip is set for
 *   the prompt (encode_prompt only applies clip_skip to the prompt), in the plain prompt
 *   syntax; in AUTOMATIC1111's, clip skip applies to both, as A1111 does;
 * - guidance is applied only when g > 1 (do_classifier_free_guidance);
 * - each image has its own generator (generator=[Generator().manual_seed(S+i), ...]):
 *   its initial latents and its step noise are drawn from it, per image;
 * - latents / scaling_factor is a division, the 8-bit value is round-half-even of
 *   clamp(x/2 + 0.5, 0, 1) * 255, all in float32.
 */
#include "pipeline/pipeline.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"
#include "core/limits.h"
#include "model/config.h"
#include "model/model.h"
#include "core/rng.h"

/* Arena sizes measured by dry runs, per UNet batch and latent size. */
#define PLAN_CACHE 8
typedef struct { int nb, h, w, encode, T; size_t bytes; } arena_plan;

struct ldm_pipeline {
    ldm_bundle *bundle;
    ldm_tokenizer *tok;
    /* geometry, from the configs once */
    int default_size, size_multiple;
    int unet_in, latent_ch;  /* unet in_channels, VAE latent_channels */
    int inpaint;             /* unet in_channels = 2 * latent + 1: an inpainting UNet */
    /* the bundle's scheduler config read as each class (index kind + 1), parsed once */
    ldm_sched_config sched[LDM_SCHED_COUNT + 1];
    int sched_state[LDM_SCHED_COUNT + 1];   /* 0 not parsed, 1 ok, -1 refused */
    char sched_error[LDM_SCHED_COUNT + 1][256];
    /* after ldm_pipeline_load */
    ldm_backend *be;
    ldm_clip *clip;
    ldm_unet *unet;
    ldm_vae *vae;
    ldm_arena arena;
    size_t arena_bytes;     /* capacity of the arena (0 = none yet) */
    arena_plan plans[PLAN_CACHE];
    int n_plans;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------ */
/* opening */

ldm_tokenizer *ldm_bundle_tokenizer(const ldm_bundle *b) {
    ldm_tokenizer_files f = {0};
    f.vocab_json = ldm_bundle_member(b, "tokenizer/vocab.json", &f.vocab_len);
    f.merges = ldm_bundle_member(b, "tokenizer/merges.txt", &f.merges_len);
    f.tokenizer_json = ldm_bundle_member(b, "tokenizer/tokenizer.json", &f.tokenizer_json_len);
    if (!(f.vocab_json && f.merges) && !f.tokenizer_json) {
        ldm_error("%s: missing member %s (a tokenizer needs tokenizer/vocab.json and "
                  "tokenizer/merges.txt, or tokenizer/tokenizer.json)", ldm_bundle_path(b),
                  f.vocab_json ? "tokenizer/merges.txt" : "tokenizer/vocab.json");
        return NULL;
    }
    f.config_json = ldm_bundle_member(b, "tokenizer/tokenizer_config.json", NULL);
    f.special_json = ldm_bundle_member(b, "tokenizer/special_tokens_map.json", NULL);
    ldm_tokenizer *t = ldm_tokenizer_load(&f);
    if (!t) ldm_error_prefix("%s: tokenizer", ldm_bundle_path(b));
    return t;
}

static int bundle_geometry(ldm_pipeline *p);

ldm_pipeline *ldm_pipeline_new(ldm_bundle *b) {
    if (!b) return NULL;
    ldm_pipeline *p = ldm_xcalloc(1, sizeof *p);
    p->bundle = b;
    if (!(p->tok = ldm_bundle_tokenizer(b)) ||
        bundle_geometry(p)) {
        ldm_error_set_kind(LDM_DATA);
        ldm_pipeline_close(p);
        return NULL;
    }
    return p;
}

int ldm_pipeline_load(ldm_pipeline *p, ldm_backend *be) {
    if (p->be) return ldm_error("pipeline: models already loaded");
    const ldm_bundle *b = p->bundle;
    p->be = be;
    /* the text encoder runs in fp32 (see ldm_pipeline_encode_text): loaded so, the backend
     * prepares no bf16 panels for it */
    int prec = be->opts.precision;
    be->opts.precision = LDM_PRECISION_FP32;
    p->clip = ldm_clip_load(b, be);
    be->opts.precision = prec;
    if (!p->clip || !(p->unet = ldm_unet_load(b, be)) ||
        !(p->vae = ldm_vae_load(b, be)))
        goto fail;
    const int lc = ldm_vae_latent_channels(p->vae), uin = ldm_unet_in_channels(p->unet);
    if (ldm_unet_out_channels(p->unet) != lc || (uin != lc && uin != 2 * lc + 1)) {
        ldm_error_kind(LDM_DATA, "%s: unet in/out channels %d/%d do not fit the VAE's %d latent channels "
                       "(in = out = %d, or in = %d for an inpainting UNet)", ldm_bundle_path(b), uin,
                       ldm_unet_out_channels(p->unet), lc, lc, 2 * lc + 1);
        goto fail;
    }
    if (ldm_unet_context_dim(p->unet) != ldm_clip_hidden_size(p->clip)) {
        ldm_error_kind(LDM_DATA, "%s: unet cross_attention_dim %d differs from the text encoder's hidden "
                       "size %d", ldm_bundle_path(b), ldm_unet_context_dim(p->unet),
                       ldm_clip_hidden_size(p->clip));
        goto fail;
    }
    ldm_tokenizer_info ti = ldm_tokenizer_get_info(p->tok);
    if (ti.max_length != ldm_clip_max_length(p->clip)) {
        ldm_error_kind(LDM_DATA, "%s: tokenizer model_max_length %d differs from the text encoder's %d "
                       "positions", ldm_bundle_path(b), ti.max_length, ldm_clip_max_length(p->clip));
        goto fail;
    }
    return 0;
fail:
    /* a refused config or weight is the bundle's fault; a backend failure is not */
    if (ldm_last_status() == LDM_RUNTIME && !be->failed) ldm_error_set_kind(LDM_DATA);
    ldm_vae_free(p->vae);
    ldm_unet_free(p->unet);
    ldm_clip_free(p->clip);
    p->vae = NULL;
    p->unet = NULL;
    p->clip = NULL;
    p->be = NULL;
    return -1;
}

ldm_pipeline *ldm_pipeline_open(const char *path, ldm_backend *be) {
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return NULL;
    ldm_pipeline *p = ldm_pipeline_new(b);
    if (p && ldm_pipeline_load(p, be)) {
        ldm_pipeline_close(p);
        return NULL;
    }
    return p;
}

void ldm_pipeline_close(ldm_pipeline *p) {
    if (!p) return;
    if (p->arena_bytes) ldm_arena_free(&p->arena);
    ldm_vae_free(p->vae);
    ldm_unet_free(p->unet);
    ldm_clip_free(p->clip);
    ldm_tokenizer_free(p->tok);
    ldm_bundle_close(p->bundle);
    free(p);
}

const ldm_bundle *ldm_pipeline_bundle(const ldm_pipeline *p) { return p->bundle; }
const ldm_tokenizer *ldm_pipeline_tokenizer(const ldm_pipeline *p) { return p->tok; }
int ldm_pipeline_is_inpaint(const ldm_pipeline *p) { return p->inpaint; }

int ldm_pipeline_default_size(const ldm_pipeline *p) { return p->default_size; }
int ldm_pipeline_size_multiple(const ldm_pipeline *p) { return p->size_multiple; }
int ldm_pipeline_text_length(const ldm_pipeline *p) { return ldm_tokenizer_get_info(p->tok).max_length; }
int ldm_pipeline_text_dim(const ldm_pipeline *p) { return p->clip ? ldm_clip_hidden_size(p->clip) : 0; }
ldm_backend *ldm_pipeline_backend(const ldm_pipeline *p) { return p->be; }

/* Make sure the arena holds `bytes`; grows (re-allocates) only when needed. */
static int arena_reserve(ldm_pipeline *p, size_t bytes) {
    if (p->arena_bytes >= bytes) return 0;
    if (p->arena_bytes) ldm_arena_free(&p->arena);
    p->arena_bytes = 0;
    if (ldm_arena_init(&p->arena, p->be, bytes))
        return ldm_error("could not allocate %.1f MiB of %s memory for activations",
                         bytes / 1048576.0, ldm_backend_name(p->be));
    p->arena_bytes = bytes;
    return 0;
}

int ldm_pipeline_encode_text(ldm_pipeline *p, const int32_t *ids, int B, int clip_skip,
                             float *out) {
    if (!p->clip) return ldm_error("pipeline: models not loaded");
    if (arena_reserve(p, ldm_clip_arena_bytes(p->clip, B))) return -1;
    /* The text encoder runs in fp32 whatever the precision: it runs once per prompt (and
     * its result is cached), and its rounding would reach every step. */
    int prec = p->be->opts.precision;
    p->be->opts.precision = LDM_PRECISION_FP32;
    int rc = ldm_clip_encode(p->clip, &p->arena, ids, B, clip_skip < 1 ? 1 : clip_skip, out);
    p->be->opts.precision = prec;
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* the text: prompt and negative prompt in their syntax (model/prompt.h) */

/* One text's embedding [chunks * T, D] (malloc'd) at clip skip `skip`. */
static int embed_one(ldm_pipeline *p, const char *text, int syntax, int skip, const char *what,
                     ldm_chunk_encoder enc, void *user, float **out, int *chunks, int *truncated) {
    ldm_prompt_tokens pt;
    *out = NULL;
    if (ldm_prompt_tokenize(p->tok, text, syntax, &pt)) return ldm_error_prefix("%s", what);
    const int T = pt.T, D = ldm_clip_hidden_size(p->clip);
    const size_t TD = (size_t)T * D;
    float *e = ldm_xmalloc(sizeof(float) * TD * (size_t)pt.n_chunks);
    int rc = 0;
    for (int c = 0; c < pt.n_chunks && !rc; c++) {
        char label[96];
        if (pt.n_chunks > 1) snprintf(label, sizeof label, "%s, chunk %d of %d", what, c + 1, pt.n_chunks);
        else snprintf(label, sizeof label, "%s", what);
        const int32_t *ids = pt.ids + (size_t)c * T;
        float *z = e + (size_t)c * TD;
        if (enc ? enc(user, p, ids, skip, label, z) : ldm_pipeline_encode_text(p, ids, 1, skip, z)) {
            rc = ldm_error_prefix("text encoder (%s)", label);
        } else if (ldm_prompt_emphasis(z, pt.weights + (size_t)c * T, T, D)) {
            rc = ldm_error_kind(LDM_USAGE, "%s: its weights give a text embedding that is not finite (%s); "
                                "use weights nearer to 1", what, label);
        }
    }
    if (!rc) {
        *out = e;
        *chunks = pt.n_chunks;
        *truncated = pt.truncated;
    } else {
        free(e);
    }
    ldm_prompt_tokens_free(&pt);
    return rc;
}

/* x [from * TD] grown to [to * TD] with copies of the chunk pad [TD]. */
static float *pad_chunks(float *x, int from, int to, const float *pad, size_t TD) {
    float *y = ldm_xmalloc(sizeof(float) * TD * (size_t)to);
    memcpy(y, x, sizeof(float) * TD * (size_t)from);
    for (int c = from; c < to; c++) memcpy(y + (size_t)c * TD, pad, sizeof(float) * TD);
    free(x);
    return y;
}

ldm_status ldm_pipeline_embed_text(ldm_pipeline *p, const ldm_gen_params *prm, ldm_chunk_encoder enc,
                                   void *user, ldm_text_embeds *out) {
    memset(out, 0, sizeof *out);
    if (!p->clip) return ldm_error("pipeline: models not loaded"), LDM_RUNTIME;
    if (!prm->prompt) return ldm_error_kind(LDM_USAGE, "no prompt"), LDM_USAGE;
    const int cfg = prm->guidance > 1.0, syntax = prm->prompt_syntax;
    const int skip = prm->clip_skip > 1 ? prm->clip_skip : 1;
    const int neg_skip = syntax == LDM_SYNTAX_A1111 ? skip : 1;
    const char *negative = prm->negative ? prm->negative : "";
    const int T = ldm_pipeline_text_length(p), D = ldm_clip_hidden_size(p->clip);
    const size_t TD = (size_t)T * D;
    if (!enc && syntax == LDM_SYNTAX_PLAIN && cfg && skip == 1) {
        /* the pipeline's own plain encoding: both texts in one batch, as it always was */
        int32_t *ids = ldm_xmalloc(sizeof(int32_t) * 2 * (size_t)T);
        float *e = ldm_xmalloc(sizeof(float) * 2 * TD);
        int rc = 0;
        if (ldm_tokenize(p->tok, negative, ids, T, &out->negative_truncated) < 0)
            rc = ldm_error_prefix("negative prompt");
        else if (ldm_tokenize(p->tok, prm->prompt, ids + T, T, &out->prompt_truncated) < 0)
            rc = ldm_error_prefix("prompt");
        else if (ldm_pipeline_encode_text(p, ids, 2, 1, e))
            rc = ldm_error_prefix("text encoder");
        free(ids);
        if (rc) {
            free(e);
            return ldm_last_status();
        }
        out->negative = e;
        out->prompt = ldm_xmalloc(sizeof(float) * TD);
        memcpy(out->prompt, e + TD, sizeof(float) * TD);
        out->prompt_chunks = out->negative_chunks = 1;
        out->tokens = T;
        return LDM_OK;
    }
    if (embed_one(p, prm->prompt, syntax, skip, "prompt", enc, user, &out->prompt, &out->prompt_chunks,
                  &out->prompt_truncated) ||
        (cfg && embed_one(p, negative, syntax, neg_skip, "negative prompt", enc, user, &out->negative,
                          &out->negative_chunks, &out->negative_truncated)))
        return ldm_last_status();
    int n = out->prompt_chunks;
    if (cfg && out->negative_chunks != n) {
        /* A1111's pad_cond: the shorter gets the empty prompt's chunk until they match */
        const int short_neg = out->negative_chunks < n;
        float *pad;
        int pc, pt;
        if (embed_one(p, "", syntax, short_neg ? neg_skip : skip, "padding", enc, user, &pad, &pc, &pt))
            return ldm_last_status();
        if (short_neg) out->negative = pad_chunks(out->negative, out->negative_chunks, n, pad, TD);
        else out->prompt = pad_chunks(out->prompt, n, out->negative_chunks, pad, TD);
        if (!short_neg) n = out->negative_chunks;
        free(pad);
        out->pad_conds = 1;
    }
    out->tokens = n * T;
    return LDM_OK;
}

void ldm_text_embeds_free(ldm_text_embeds *t) {
    if (!t) return;
    free(t->prompt);
    free(t->negative);
    t->prompt = t->negative = NULL;
}

/* ------------------------------------------------------------------------------------ */
/* parameters */

ldm_gen_params ldm_gen_params_default(void) {
    ldm_gen_params g;
    memset(&g, 0, sizeof g);
    g.steps = 50;
    g.guidance = 7.5;
    g.batch = 1;
    g.scheduler = -1;
    g.spacing = -1;
    g.final_sigmas = -1;
    g.strength = 0.8;
    return g;
}

/* The bundle's scheduler config read as class `kind` (-1: its own), parsed once. */
static int sched_base(ldm_pipeline *p, int kind, ldm_sched_config *sc) {
    if (kind < -1 || kind >= LDM_SCHED_COUNT) return ldm_error_kind(LDM_USAGE, "scheduler %d: unknown", kind);
    int i = kind + 1;
    if (p->sched_state[i] == 0) {
        const char *member = "scheduler/scheduler_config.json";
        const char *json = ldm_bundle_member(p->bundle, member, NULL);
        int rc = json ? ldm_sched_config_parse(&p->sched[i], json, member, kind)
                      : ldm_error_kind(LDM_DATA, "%s: missing member %s", ldm_bundle_path(p->bundle), member);
        p->sched_state[i] = rc ? -1 : 1;
        if (rc) snprintf(p->sched_error[i], sizeof p->sched_error[i], "%s", ldm_last_error());
    }
    if (p->sched_state[i] < 0) return ldm_error_kind(LDM_DATA, "%s", p->sched_error[i]);
    *sc = p->sched[i];
    return 0;
}

int ldm_gen_sched_config(ldm_pipeline *p, const ldm_gen_params *prm, ldm_sched_config *sc) {
    if (sched_base(p, prm->scheduler, sc)) return -1;
    if (prm->karras) {
        if (sc->kind != LDM_SCHED_EULER && sc->kind != LDM_SCHED_DPMPP_2M)
            return ldm_error_kind(LDM_USAGE, "--karras applies to the euler and dpmpp_2m schedulers, not %s",
                                  ldm_sched_name(sc->kind));
        sc->use_karras_sigmas = 1;
    }
    if (prm->eta != 0) {
        if (!(prm->eta >= 0 && prm->eta <= 1))
            return ldm_error_kind(LDM_USAGE, "eta %g: expected a number from 0 to 1", prm->eta);
        if (sc->kind != LDM_SCHED_DDIM)
            return ldm_error_kind(LDM_USAGE, "eta applies to the ddim scheduler only, not %s",
                                  ldm_sched_name(sc->kind));
        sc->eta = prm->eta;
    }
    if (prm->spacing >= 0) sc->timestep_spacing = prm->spacing;
    if (prm->final_sigmas >= 0) {
        if (prm->final_sigmas >= LDM_FINAL_COUNT)
            return ldm_error_kind(LDM_USAGE, "final sigmas %d: unknown", prm->final_sigmas);
        if (sc->kind != LDM_SCHED_DPMPP_2M)
            return ldm_error_kind(LDM_USAGE, "--final-sigmas applies to the dpmpp_2m scheduler, not %s",
                                  ldm_sched_name(sc->kind));
        sc->final_sigmas = prm->final_sigmas;
    }
    return 0;
}

/* Image geometry from the configs: default side (unet sample_size * VAE factor) and the
 * multiple sizes must have (the VAE factor: the UNet takes any latent size, as diffusers'
 * does, rounding up going down and resizing to the skips' sizes going up). */
static int bundle_geometry(ldm_pipeline *p) {
    const ldm_bundle *b = p->bundle;
    json_t *u = cfg_load(b, "unet/config.json"), *v = u ? cfg_load(b, "vae/config.json") : NULL;
    int ub[8], vb[8], nu = 0, nv = 0, ss = 0, rc = -1;
    if (v && !cfg_int_list(u, "unet/config.json", "block_out_channels", ub, 8, &nu) &&
        !cfg_int_list(v, "vae/config.json", "block_out_channels", vb, 8, &nv) &&
        !cfg_count(u, "unet/config.json", "sample_size", 0, LDM_MAX_SAMPLE_SIZE, &ss) &&
        !cfg_count_or(u, "unet/config.json", "in_channels", 4, 1, LDM_MAX_CHANNELS, &p->unet_in) &&
        !cfg_count_or(v, "vae/config.json", "latent_channels", 4, 1, LDM_MAX_CHANNELS, &p->latent_ch)) {
        if (nu < 1 || nv < 1 || ss < 1)
            ldm_error("%s: unet/vae config: empty block_out_channels or bad sample_size",
                      ldm_bundle_path(b));
        else {
            int f = 1 << (nv - 1);
            p->default_size = ss * f;
            p->size_multiple = f;
            p->inpaint = p->unet_in == 2 * p->latent_ch + 1;
            rc = 0;
        }
    }
    if (u) json_decref(u);
    if (v) json_decref(v);
    return rc;
}

/* Parameters against the limits and the model, without building the scheduler. */
static int check_params(ldm_pipeline *p, const ldm_gen_params *prm, ldm_sched_config *sc, int *width,
                        int *height) {
    if (!prm->prompt && !prm->prompt_embeds) return ldm_error_kind(LDM_USAGE, "no prompt");
    if (prm->steps < 1 || prm->steps > 1000)
        return ldm_error_kind(LDM_USAGE, "steps %d: expected 1..1000", prm->steps);
    if (!(prm->guidance >= 0 && prm->guidance <= 100))
        return ldm_error_kind(LDM_USAGE, "guidance scale %g: expected a number from 0 to 100", prm->guidance);
    if (prm->batch < 0 || prm->batch > 64)
        return ldm_error_kind(LDM_USAGE, "batch %d: expected 1..64", prm->batch);
    if (prm->clip_skip < 0 || prm->clip_skip > 12)
        return ldm_error_kind(LDM_USAGE, "clip skip %d: expected 1..12", prm->clip_skip);
    if (prm->prompt_syntax != LDM_SYNTAX_PLAIN && prm->prompt_syntax != LDM_SYNTAX_A1111)
        return ldm_error_kind(LDM_USAGE, "prompt syntax %d: unknown", prm->prompt_syntax);
    if (prm->prompt_embeds &&
        (prm->text_tokens < 0 || prm->text_tokens > LDM_MAX_PROMPT_CHUNKS * ldm_pipeline_text_length(p)))
        return ldm_error_kind(LDM_USAGE, "text_tokens %d: expected 0..%d", prm->text_tokens,
                              LDM_MAX_PROMPT_CHUNKS * ldm_pipeline_text_length(p));
    if (!prm->prompt_embeds && prm->prompt_syntax == LDM_SYNTAX_A1111) {
        /* the prompts' syntax, before any work: a bad weight or too many chunks */
        const int cfg = prm->guidance > 1.0;
        for (int k = 0; k < 1 + cfg; k++) {
            const char *text = k ? (prm->negative ? prm->negative : "") : prm->prompt;
            ldm_prompt_tokens pt;
            if (ldm_prompt_tokenize(p->tok, text, LDM_SYNTAX_A1111, &pt))
                return ldm_error_prefix("%s", k ? "negative prompt" : "prompt");
            ldm_prompt_tokens_free(&pt);
        }
    }
    const int m = p->size_multiple;
    int W = prm->width ? prm->width : p->default_size, H = prm->height ? prm->height : p->default_size;
    if (W < m || H < m || W % m || H % m || W > 8192 || H > 8192)
        return ldm_error_kind(LDM_USAGE, "size %dx%d: this model needs width and height in multiples of %d "
                              "(%d..8192)", W, H, m, m);
    if (prm->mask && !prm->init_image)
        return ldm_error_kind(LDM_USAGE, "a mask needs an init image (inpainting)");
    if (p->inpaint && !prm->mask)
        return ldm_error_kind(LDM_USAGE, "%s is an inpainting model (unet in_channels %d): it needs an "
                              "init image and a mask (--init-img FILE --mask MASK)",
                              ldm_bundle_path(p->bundle), p->unet_in);
    if (width) *width = W;
    if (height) *height = H;
    return ldm_gen_sched_config(p, prm, sc);
}

int ldm_gen_check(ldm_pipeline *p, const ldm_gen_params *prm, ldm_sched_config *sc, int *width,
                  int *height) {
    if (check_params(p, prm, sc, width, height)) return -1;
    /* build it once: schedules that do not fit (e.g. too many steps) fail here */
    ldm_sched *s = ldm_sched_new(sc, prm->steps);
    if (!s) return ldm_error_set_kind(LDM_USAGE);
    int i0, rc = prm->init_image ? ldm_sched_start_index(s, prm->strength, &i0) : 0;
    ldm_sched_free(s);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* generation */

/* diffusers' numpy_to_pil after postprocess: x in [-1,1] (NCHW) -> uint8 HWC. */
static void to_rgb8(const float *img, int H, int W, uint8_t *rgb) {
    const size_t HW = (size_t)H * W;
    for (int c = 0; c < 3; c++)
        for (size_t k = 0; k < HW; k++) {
            float v = img[c * HW + k] / 2.0f + 0.5f;
            v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
            rgb[k * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
        }
}

/* Activation bytes for the three models at UNet batch nb, latent h x w and text context
 * T: the largest of their dry runs, measured once per (nb, h, w, encode, T). */
static size_t arena_need(ldm_pipeline *p, int nb, int h, int w, int encode, int T) {
    for (int i = 0; i < p->n_plans; i++)
        if (p->plans[i].nb == nb && p->plans[i].h == h && p->plans[i].w == w &&
            p->plans[i].encode == encode && p->plans[i].T == T)
            return p->plans[i].bytes;
    size_t need = ldm_clip_arena_bytes(p->clip, 2);
    size_t u = ldm_unet_arena_bytes(p->unet, nb, h, w, T);
    size_t v = ldm_vae_arena_bytes(p->vae, 1, h, w);
    if (u > need) need = u;
    if (v > need) need = v;
    if (encode) {
        const int f = ldm_vae_downscale(p->vae);
        size_t e = ldm_vae_encode_arena_bytes(p->vae, h * f, w * f);
        if (e > need) need = e;
    }
    arena_plan e = {nb, h, w, encode, T, need};
    if (p->n_plans < PLAN_CACHE) p->plans[p->n_plans++] = e;
    else {
        memmove(p->plans, p->plans + 1, sizeof p->plans[0] * (PLAN_CACHE - 1));
        p->plans[PLAN_CACHE - 1] = e;
    }
    return need;
}

static int check_finite(const float *x, size_t n, const char *what);

/* The encoder's latent distribution of img [3, h*f, w*f]: mom[2 * per] (mean, logvar). */
static int encode_moments(ldm_pipeline *p, const float *img, int h, int w, size_t per, float *mom,
                          const char *what) {
    const int f = ldm_vae_downscale(p->vae);
    if (ldm_vae_encode(p->vae, &p->arena, img, h * f, w * f, mom))
        return ldm_error_prefix("vae encode (%s)", what);
    return check_finite(mom, 2 * per, what);
}

/* retrieve_latents(..., generator) * scaling_factor: DiagonalGaussianDistribution.sample,
 * logvar clamped to [-30, 20], std = exp(0.5 logvar), one randn draw of `per` from rng. */
static void sample_moments(const ldm_pipeline *p, const float *mom, size_t per, ldm_rng *rng,
                           float *eps, float *out) {
    const float *mean = mom, *logvar = mom + per;
    const float sf = ldm_vae_scaling_factor(p->vae);
    ldm_rng_randn(rng, eps, per);
    for (size_t k = 0; k < per; k++) {
        float lv = logvar[k] < -30.0f ? -30.0f : logvar[k] > 20.0f ? 20.0f : logvar[k];
        float sd = expf(0.5f * lv), t = sd * eps[k];
        out[k] = sf * (mean[k] + t);
    }
}

/* Image to image: x[B, C, h, w] = add_noise(scaling_factor * sample(encode(image)), randn)
 * at timestep i0, each image's two draws (the encoder's sample, then the noise) from its
 * own generator, in diffusers' order (StableDiffusionImg2ImgPipeline.prepare_latents). */
static int init_latents(ldm_pipeline *p, const ldm_gen_params *prm, const ldm_sched *s, int i0,
                        ldm_rng *rngs, int B, size_t per, int h, int w, float *x, ldm_gen_result *res) {
    float *mom = ldm_xmalloc(sizeof(float) * 2 * per), *eps = ldm_xmalloc(sizeof(float) * per);
    int rc = encode_moments(p, prm->init_image, h, w, per, mom, "encoded image");
    if (!rc) {
        if (prm->keep_latents) res->latents_init = ldm_xmalloc(sizeof(float) * B * per);
        for (int b = 0; b < B; b++) {
            float *xb = x + (size_t)b * per;
            sample_moments(p, mom, per, &rngs[b], eps, xb);
            ldm_rng_randn(&rngs[b], eps, per);
            if (prm->keep_latents) memcpy(res->latents_init + (size_t)b * per, eps, sizeof(float) * per);
            ldm_sched_add_noise(s, i0, xb, eps, per);
        }
    }
    free(mom);
    free(eps);
    return rc;
}

/* What inpainting keeps across the denoising loop. */
typedef struct {
    float *image_latents;   /* [per] the init image's latents (4-channel UNet, or strength < 1) */
    float *noise;           /* [B, per] the initial noise, one draw per image */
    float *mask;            /* [h, w] the mask at latent size (nearest), 0 or 1 */
    float *masked_latents;  /* [per] latents of the init image with the masked pixels zeroed */
} inpaint_state;

static void inpaint_free(inpaint_state *q) {
    free(q->image_latents);
    free(q->noise);
    free(q->mask);
    free(q->masked_latents);
}

/* Inpainting (StableDiffusionInpaintPipeline): the draws in its order.  The init image's
 * latents (for a 4-channel UNet, which blends them back at every step, or when strength <
 * 1) are sampled from the FIRST image's generator (diffusers encodes the one init image
 * with generator[0]); then each image's noise from its own generator; latents = noise *
 * init_noise_sigma at strength 1, else add_noise(image latents, noise, timesteps[i0]);
 * then the masked image (init * (mask < 0.5)) is encoded and sampled from the first
 * generator again (prepare_mask_latents, also for a 4-channel UNet).  The mask goes to
 * latent size by nearest-neighbour interpolation (F.interpolate's default). */
static int inpaint_latents(ldm_pipeline *p, const ldm_gen_params *prm, const ldm_sched *s, int i0,
                           ldm_rng *rngs, int B, size_t per, int h, int w, float *x,
                           inpaint_state *q, ldm_gen_result *res) {
    const int f = ldm_vae_downscale(p->vae), H = h * f, W = w * f;
    const int strength_max = prm->strength == 1.0;
    const size_t HW = (size_t)H * W;
    float *mom = ldm_xmalloc(sizeof(float) * 2 * per), *eps = ldm_xmalloc(sizeof(float) * per);
    float *masked = NULL;
    int rc = -1;
    q->noise = ldm_xmalloc(sizeof(float) * B * per);
    if (!p->inpaint || !strength_max) {
        if (encode_moments(p, prm->init_image, h, w, per, mom, "encoded image")) goto out;
        q->image_latents = ldm_xmalloc(sizeof(float) * per);
        sample_moments(p, mom, per, &rngs[0], eps, q->image_latents);
    }
    for (int b = 0; b < B; b++) {
        float *nb = q->noise + (size_t)b * per, *xb = x + (size_t)b * per;
        ldm_rng_randn(&rngs[b], nb, per);
        if (strength_max) {
            for (size_t k = 0; k < per; k++) xb[k] = nb[k] * s->init_noise_sigma;
        } else {
            memcpy(xb, q->image_latents, sizeof(float) * per);
            ldm_sched_add_noise(s, i0, xb, nb, per);
        }
    }
    if (prm->keep_latents) {
        res->latents_init = ldm_xmalloc(sizeof(float) * B * per);
        memcpy(res->latents_init, q->noise, sizeof(float) * B * per);
    }
    masked = ldm_xmalloc(sizeof(float) * 3 * HW);
    for (int c = 0; c < 3; c++)
        for (size_t k = 0; k < HW; k++)
            masked[c * HW + k] = prm->init_image[c * HW + k] * (prm->mask[k] < 0.5f ? 1.0f : 0.0f);
    if (encode_moments(p, masked, h, w, per, mom, "encoded masked image")) goto out;
    q->masked_latents = ldm_xmalloc(sizeof(float) * per);
    sample_moments(p, mom, per, &rngs[0], eps, q->masked_latents);
    q->mask = ldm_xmalloc(sizeof(float) * h * w);
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++) q->mask[y * w + xx] = prm->mask[(size_t)y * f * W + (size_t)xx * f];
    rc = 0;
out:
    free(mom);
    free(eps);
    free(masked);
    return rc;
}

/* A 4-channel UNet's inpainting after step i: outside the mask the image latents come
 * back, noised to the next timestep (not after the last step):
 * x = (1 - mask) * add_noise(image_latents, noise, timesteps[i + 1]) + mask * x. */
static void inpaint_blend(const ldm_sched *s, int i, const inpaint_state *q, int B, int Cl,
                          size_t hw, float *x, float *tmp) {
    const size_t per = (size_t)Cl * hw;
    for (int b = 0; b < B; b++) {
        memcpy(tmp, q->image_latents, sizeof(float) * per);
        if (i < s->n_timesteps - 1) ldm_sched_add_noise(s, i + 1, tmp, q->noise + (size_t)b * per, per);
        float *xb = x + (size_t)b * per;
        for (int c = 0; c < Cl; c++)
            for (size_t k = 0; k < hw; k++) {
                const float m = q->mask[k];
                float a = (1.0f - m) * tmp[c * hw + k], bb = m * xb[c * hw + k];
                xb[c * hw + k] = a + bb;
            }
    }
}

/* All finite?  Names what and where when not. */
static int check_finite(const float *x, size_t n, const char *what) {
    for (size_t k = 0; k < n; k++)
        if (!isfinite(x[k]))
            return ldm_error("%s: value %zu of %zu is %s (the model or its parameters give "
                             "non-finite numbers; nothing was written)", what, k, n,
                             isnan(x[k]) ? "NaN" : "infinite");
    return 0;
}

ldm_status ldm_generate(ldm_pipeline *p, const ldm_gen_params *prm, ldm_gen_result *res) {
    memset(res, 0, sizeof *res);
    double t0 = now_s(), f0 = ldm_backend_gflop(p->be);
    if (!p->unet) return ldm_error("pipeline: models not loaded (ldm_pipeline_load)"), LDM_RUNTIME;
    int W, H;
    if (check_params(p, prm, &res->sched, &W, &H)) return ldm_last_status();
    const int B = prm->batch ? prm->batch : 1;
    const int f = ldm_vae_downscale(p->vae), h = H / f, w = W / f;
    const int C = p->latent_ch, Cu = p->unet_in;   /* latent channels; the UNet's input */
    const int D = ldm_clip_hidden_size(p->clip);
    int T = ldm_clip_max_length(p->clip);   /* the text context: 77 * chunks */
    const size_t hw = (size_t)h * w, per = (size_t)C * hw, n = (size_t)B * per;
    size_t TD = (size_t)T * D;
    const int cfg = prm->guidance > 1.0;    /* do_classifier_free_guidance */
    const int NB = cfg ? 2 * B : B;         /* UNet batch */
    res->batch = B; res->width = W; res->height = H;
    res->latent_channels = C; res->latent_h = h; res->latent_w = w;

    ldm_sched *s = NULL;
    ldm_rng *rngs = NULL;
    float *ctx = NULL, *emb = NULL, *x = NULL, *xin = NULL, *eps = NULL, *img = NULL, *xs = NULL;
    inpaint_state q = {0};
    const int inpaint = prm->mask != NULL;
    int rc = -1;

    const int img2img = prm->init_image != NULL;
    if (img2img && !ldm_vae_has_encoder(p->vae)) {
        ldm_error_kind(LDM_DATA, "%s: this bundle has no VAE encoder (vae.encoder.* weights); %s "
                       "needs one", ldm_bundle_path(p->bundle), inpaint ? "inpainting" : "image to image");
        return LDM_DATA;
    }

    /* ---- text: the caller's embeddings (prompt_embeds / negative_prompt_embeds), else
     * tokenize and encode here ---- */
    if (prm->prompt_embeds) {
        T = prm->text_tokens ? prm->text_tokens : T;
        TD = (size_t)T * D;
        emb = ldm_xmalloc(sizeof(float) * 2 * TD);   /* [neg; prompt] */
        memcpy(emb + TD, prm->prompt_embeds, sizeof(float) * TD);
        if (cfg) {
            if (!prm->negative_embeds) {
                ldm_error_kind(LDM_USAGE, "prompt embeddings given without negative prompt embeddings");
                goto done;
            }
            memcpy(emb, prm->negative_embeds, sizeof(float) * TD);
        }
    } else {
        ldm_text_embeds te;
        ldm_status st = ldm_pipeline_embed_text(p, prm, NULL, NULL, &te);
        res->prompt_truncated = te.prompt_truncated;
        res->negative_truncated = te.negative_truncated;
        res->pad_conds = te.pad_conds;
        if (st) {
            ldm_text_embeds_free(&te);
            goto done;
        }
        T = te.tokens;
        TD = (size_t)T * D;
        emb = ldm_xmalloc(sizeof(float) * 2 * TD);
        memcpy(emb + TD, te.prompt, sizeof(float) * TD);
        if (cfg) memcpy(emb, te.negative, sizeof(float) * TD);
        ldm_text_embeds_free(&te);
    }
    res->text_tokens = T;

    /* one arena for the three models at this size (dry runs cached per batch, size and
     * text length) */
    if (arena_reserve(p, arena_need(p, NB, h, w, img2img, T))) goto done;
    /* UNet context [NB, T, D]: cfg ? [neg x B; prompt x B] : [prompt x B] */
    ctx = ldm_xmalloc(sizeof(float) * NB * TD);
    for (int i = 0; i < NB; i++) {
        const float *src = (cfg && i < B) ? emb : emb + TD;
        memcpy(ctx + i * TD, src, TD * sizeof(float));
    }
    double t1 = now_s(), f1 = ldm_backend_gflop(p->be);
    res->t_text = t1 - t0;
    res->gflop_text = f1 - f0;

    /* ---- latents ---- */
    if (!(s = ldm_sched_new(&res->sched, prm->steps))) goto done;
    int i0 = 0;   /* the first timestep run: 0, or where image to image starts */
    if (img2img && ldm_sched_start_index(s, prm->strength, &i0)) goto done;
    res->unet_evaluations = s->n_timesteps - i0;
    rngs = ldm_xcalloc((size_t)B, sizeof *rngs);
    x = ldm_xmalloc(sizeof(float) * n);
    for (int b = 0; b < B; b++) ldm_rng_seed(&rngs[b], prm->seed + (uint64_t)b);
    if (!img2img) {
        for (int b = 0; b < B; b++) ldm_rng_randn(&rngs[b], x + b * per, per);
        if (prm->keep_latents) {
            res->latents_init = ldm_xmalloc(sizeof(float) * n);
            memcpy(res->latents_init, x, sizeof(float) * n);
        }
        for (size_t k = 0; k < n; k++) x[k] = x[k] * s->init_noise_sigma;
    } else if (inpaint ? inpaint_latents(p, prm, s, i0, rngs, B, per, h, w, x, &q, res)
                       : init_latents(p, prm, s, i0, rngs, B, per, h, w, x, res)) {
        goto done;
    }

    /* ---- denoising loop ---- */
    xin = ldm_xmalloc(sizeof(float) * NB * Cu * hw);
    eps = ldm_xmalloc(sizeof(float) * NB * per);
    if (inpaint) xs = ldm_xmalloc(sizeof(float) * n);
    const float g = (float)prm->guidance;
    for (int i = i0; i < s->n_timesteps; i++) {
        if (prm->interrupt && *prm->interrupt) {
            res->interrupted = 1;
            ldm_error_kind(LDM_INTERRUPTED, "interrupted after %d of %d steps", i, s->n_timesteps);
            goto done;
        }
        /* latent_model_input = cat([x] * 2) if cfg; scale_model_input */
        if (Cu == C) {
            ldm_sched_scale_model_input(s, i, xin, x, n);
            if (cfg) memcpy(xin + n, xin, n * sizeof(float));
        } else {
            /* an inpainting UNet: cat([scaled latents, mask, masked image latents], dim=1) */
            ldm_sched_scale_model_input(s, i, xs, x, n);
            for (int b = 0; b < NB; b++) {
                float *d = xin + (size_t)b * Cu * hw;
                memcpy(d, xs + (size_t)(b % B) * per, sizeof(float) * per);
                memcpy(d + per, q.mask, sizeof(float) * hw);
                memcpy(d + per + hw, q.masked_latents, sizeof(float) * per);
            }
        }
        if (ldm_unet_forward(p->unet, &p->arena, xin, s->timesteps[i], ctx, NB, h, w, T, eps)) {
            ldm_error_prefix("unet, step %d", i + 1);
            goto done;
        }
        if (cfg) {
            /* eps = uncond + g * (cond - uncond) */
            for (size_t k = 0; k < n; k++) eps[k] = eps[k] + g * (eps[n + k] - eps[k]);
        }
        if (ldm_sched_step(s, i, eps, x, B, per, rngs)) goto done;
        if (inpaint && Cu == C) inpaint_blend(s, i, &q, B, C, hw, x, xs);
        /* denoising steps, not UNet evaluations (PNDM evaluates steps + 1 times) */
        if (prm->progress) {
            const int run = s->n_timesteps - i0, todo = img2img ? (run < prm->steps ? run : prm->steps) : prm->steps;
            prm->progress(prm->progress_user,
                          (int)(((int64_t)(i - i0 + 1) * todo + run - 1) / run), todo);
        }
    }
    if (check_finite(x, n, "final latents")) goto done;
    if (prm->keep_latents) {
        res->latents_final = ldm_xmalloc(sizeof(float) * n);
        memcpy(res->latents_final, x, sizeof(float) * n);
    }
    double t2 = now_s(), f2 = ldm_backend_gflop(p->be);
    res->t_sampling = t2 - t1;
    res->gflop_sampling = f2 - f1;
    if (prm->interrupt && *prm->interrupt) {
        res->interrupted = 1;
        ldm_error_kind(LDM_INTERRUPTED, "interrupted before decoding");
        goto done;
    }

    /* ---- decode, one image at a time ---- */
    const float sf = ldm_vae_scaling_factor(p->vae);
    for (size_t k = 0; k < n; k++) x[k] = x[k] / sf;
    img = ldm_xmalloc(sizeof(float) * 3 * (size_t)H * W);
    res->rgb = ldm_xmalloc((size_t)B * H * W * 3);
    for (int b = 0; b < B; b++) {
        if (ldm_vae_decode(p->vae, &p->arena, x + b * per, 1, h, w, img)) {
            ldm_error_prefix("vae decode");
            goto done;
        }
        if (check_finite(img, (size_t)3 * H * W, "decoded image")) goto done;
        to_rgb8(img, H, W, res->rgb + (size_t)b * H * W * 3);
    }
    double t3 = now_s();
    res->t_decode = t3 - t2;
    res->gflop_decode = ldm_backend_gflop(p->be) - f2;
    res->t_total = t3 - t0;
    rc = 0;
done:
    if (rc) {
        free(res->rgb); res->rgb = NULL;
        free(res->latents_init); res->latents_init = NULL;
        free(res->latents_final); res->latents_final = NULL;
    }
    ldm_sched_free(s);
    free(rngs); free(ctx); free(emb); free(x); free(xin); free(eps); free(img); free(xs);
    inpaint_free(&q);
    return rc ? ldm_last_status() : LDM_OK;
}

void ldm_gen_result_free(ldm_gen_result *r) {
    if (!r) return;
    free(r->rgb);
    free(r->latents_init);
    free(r->latents_final);
    r->rgb = NULL;
    r->latents_init = r->latents_final = NULL;
}

/* ------------------------------------------------------------------------------------ */
/* AUTOMATIC1111 parameters text */

typedef struct { char *s; size_t n, cap; } sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) LDM_PRINTF(2, 3);
static void sb_add(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)k + 1 > b->cap) {
        b->cap = (b->n + (size_t)k + 1) * 2;
        char *t = ldm_xmalloc(b->cap);
        if (b->s) memcpy(t, b->s, b->n + 1);
        free(b->s);
        b->s = t;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

/* Shortest "%g"-style number that reads back as the same double (7.5, 0.5, 12). */
static void fmt_num(char *out, size_t cap, double v) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

char *ldm_a1111_parameters(const ldm_gen_params *prm, const ldm_gen_result *res, int i,
                           const char *model_hash, const char *model_name) {
    sbuf b = {0};
    char g[32];
    sb_add(&b, "%s", prm->prompt ? prm->prompt : "");
    if (prm->negative && prm->negative[0]) sb_add(&b, "\nNegative prompt: %s", prm->negative);
    fmt_num(g, sizeof g, prm->guidance);
    sb_add(&b, "\nSteps: %d, Sampler: %s, CFG scale: %s, Seed: %llu, Size: %dx%d", prm->steps,
           ldm_sched_a1111_name(&res->sched), g,
           (unsigned long long)(prm->seed + (uint64_t)i), res->width, res->height);
    if (model_hash && model_hash[0]) sb_add(&b, ", Model hash: %.10s", model_hash);
    if (model_name && model_name[0]) sb_add(&b, ", Model: %s", model_name);
    if (prm->init_image) {   /* A1111's key for img2img */
        fmt_num(g, sizeof g, prm->strength);
        sb_add(&b, ", Denoising strength: %s", g);
        if (prm->mask) sb_add(&b, ", Mask blur: 0");   /* A1111's key; ldm does not blur */
    }
    if (res->batch > 1) sb_add(&b, ", Batch size: %d, Batch pos: %d", res->batch, i);
    if (prm->clip_skip > 1) sb_add(&b, ", Clip skip: %d", prm->clip_skip);
    if (res->sched.kind == LDM_SCHED_DDIM && res->sched.eta > 0) {
        fmt_num(g, sizeof g, res->sched.eta);
        sb_add(&b, ", Eta DDIM: %s", g);
    }
    if (prm->spacing >= 0)
        sb_add(&b, ", Timestep spacing: %s", ldm_spacing_name(res->sched.timestep_spacing));
    if (res->pad_conds) sb_add(&b, ", Pad conds: True");   /* as A1111 notes its padding */
    sb_add(&b, ", Version: ldm %s", LDM_VERSION);
    return b.s;
}
