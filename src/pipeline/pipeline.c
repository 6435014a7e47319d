/* pipeline.c - text to image (StableDiffusionPipeline): tokenize, encode, denoise with a
 * scheduler, decode, convert to 8-bit RGB.  See pipeline.h for the data flow.
 *
 * Matching diffusers 0.25.1 details kept here on purpose:
 * - the negative prompt is encoded from the last layer even when clip skip is set for
 *   the prompt (encode_prompt only applies clip_skip to the prompt);
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

struct ldm_pipeline {
    ldm_bundle *bundle;
    const ldm_backend *be;
    ldm_tokenizer *tok;
    ldm_clip *clip;
    ldm_unet *unet;
    ldm_vae *vae;
    ldm_arena arena;
    size_t arena_bytes;     /* capacity of the arena (0 = none yet) */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------ */
/* opening */

ldm_tokenizer *ldm_bundle_tokenizer(const ldm_bundle *b) {
    size_t vlen = 0, mlen = 0;
    const char *vocab = ldm_bundle_member(b, "tokenizer/vocab.json", &vlen);
    const char *merges = ldm_bundle_member(b, "tokenizer/merges.txt", &mlen);
    if (!vocab || !merges) {
        ldm_error("%s: missing member %s", ldm_bundle_path(b),
                  vocab ? "tokenizer/merges.txt" : "tokenizer/vocab.json");
        return NULL;
    }
    const char *cfg = ldm_bundle_member(b, "tokenizer/tokenizer_config.json", NULL);
    const char *special = ldm_bundle_member(b, "tokenizer/special_tokens_map.json", NULL);
    ldm_tokenizer *t = ldm_tokenizer_new(vocab, vlen, merges, mlen, cfg, special);
    if (!t) ldm_error_prefix("%s: tokenizer", ldm_bundle_path(b));
    return t;
}

ldm_pipeline *ldm_pipeline_new(ldm_bundle *b, const ldm_backend *be) {
    if (!b) return NULL;
    ldm_pipeline *p = ldm_xcalloc(1, sizeof *p);
    p->bundle = b;
    p->be = be;
    if (!(p->tok = ldm_bundle_tokenizer(b))) goto fail;
    if (!(p->clip = ldm_clip_load(b, be))) goto fail;
    if (!(p->unet = ldm_unet_load(b, be))) goto fail;
    if (!(p->vae = ldm_vae_load(b, be))) goto fail;
    if (ldm_unet_in_channels(p->unet) != ldm_vae_latent_channels(p->vae) ||
        ldm_unet_out_channels(p->unet) != ldm_unet_in_channels(p->unet)) {
        ldm_error("%s: unet in/out channels %d/%d do not match the VAE's %d latent channels",
                  ldm_bundle_path(b), ldm_unet_in_channels(p->unet),
                  ldm_unet_out_channels(p->unet), ldm_vae_latent_channels(p->vae));
        goto fail;
    }
    if (ldm_unet_context_dim(p->unet) != ldm_clip_hidden_size(p->clip)) {
        ldm_error("%s: unet cross_attention_dim %d differs from the text encoder's hidden "
                  "size %d", ldm_bundle_path(b), ldm_unet_context_dim(p->unet),
                  ldm_clip_hidden_size(p->clip));
        goto fail;
    }
    ldm_tokenizer_info ti = ldm_tokenizer_get_info(p->tok);
    if (ti.max_length != ldm_clip_max_length(p->clip)) {
        ldm_error("%s: tokenizer model_max_length %d differs from the text encoder's %d "
                  "positions", ldm_bundle_path(b), ti.max_length, ldm_clip_max_length(p->clip));
        goto fail;
    }
    return p;
fail:
    ldm_pipeline_close(p);
    return NULL;
}

ldm_pipeline *ldm_pipeline_open(const char *path, const ldm_backend *be) {
    ldm_bundle *b = ldm_bundle_open(path);
    return b ? ldm_pipeline_new(b, be) : NULL;
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
int ldm_pipeline_default_size(const ldm_pipeline *p) {
    return ldm_unet_sample_size(p->unet) * ldm_vae_downscale(p->vae);
}
int ldm_pipeline_size_multiple(const ldm_pipeline *p) { return ldm_vae_downscale(p->vae); }
int ldm_pipeline_text_length(const ldm_pipeline *p) { return ldm_clip_max_length(p->clip); }
int ldm_pipeline_text_dim(const ldm_pipeline *p) { return ldm_clip_hidden_size(p->clip); }

/* Make sure the arena holds `bytes`; grows (re-allocates) only when needed. */
static int arena_reserve(ldm_pipeline *p, size_t bytes) {
    if (p->arena_bytes >= bytes) return 0;
    if (p->arena_bytes) ldm_arena_free(&p->arena);
    p->arena_bytes = 0;
    if (ldm_arena_init(&p->arena, p->be, bytes))
        return ldm_error("could not allocate %.1f MiB of %s memory for activations",
                         bytes / 1048576.0, p->be->name);
    p->arena_bytes = bytes;
    return 0;
}

int ldm_pipeline_encode_text(ldm_pipeline *p, const int32_t *ids, int B, int clip_skip,
                             float *out) {
    if (arena_reserve(p, ldm_clip_arena_bytes(p->clip, B))) return -1;
    return ldm_clip_encode(p->clip, &p->arena, ids, B, clip_skip < 1 ? 1 : clip_skip, out);
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
    return g;
}

int ldm_gen_sched_config(const ldm_bundle *b, const ldm_gen_params *prm, ldm_sched_config *sc) {
    const char *member = "scheduler/scheduler_config.json";
    const char *json = ldm_bundle_member(b, member, NULL);
    if (!json) return ldm_error("%s: missing member %s", ldm_bundle_path(b), member);
    if (ldm_sched_config_parse(sc, json, member, prm->scheduler)) return -1;
    if (prm->karras) {
        if (sc->kind != LDM_SCHED_EULER && sc->kind != LDM_SCHED_DPMPP_2M)
            return ldm_error("--karras applies to the euler and dpmpp_2m schedulers, not %s",
                             ldm_sched_name(sc->kind));
        sc->use_karras_sigmas = 1;
    }
    if (prm->eta != 0) {
        if (!(prm->eta >= 0 && prm->eta <= 1000))
            return ldm_error("eta %g: expected a number >= 0", prm->eta);
        if (sc->kind != LDM_SCHED_DDIM)
            return ldm_error("eta applies to the ddim scheduler only, not %s",
                             ldm_sched_name(sc->kind));
        sc->eta = prm->eta;
    }
    if (prm->spacing >= 0) sc->timestep_spacing = prm->spacing;
    return 0;
}

/* Image geometry from the configs: default side (unet sample_size * VAE factor) and the
 * multiple sizes must have (the VAE factor: the UNet takes any latent size, as diffusers'
 * does, rounding up going down and resizing to the skips' sizes going up). */
static int bundle_geometry(const ldm_bundle *b, int *def, int *mult) {
    json_t *u = cfg_load(b, "unet/config.json"), *v = u ? cfg_load(b, "vae/config.json") : NULL;
    int ub[8], vb[8], nu = 0, nv = 0, ss = 0, rc = -1;
    if (v && !cfg_int_list(u, "unet/config.json", "block_out_channels", ub, 8, &nu) &&
        !cfg_int_list(v, "vae/config.json", "block_out_channels", vb, 8, &nv) &&
        !cfg_count(u, "unet/config.json", "sample_size", 0, LDM_MAX_SAMPLE_SIZE, &ss)) {
        if (nu < 1 || nv < 1 || ss < 1)
            ldm_error("%s: unet/vae config: empty block_out_channels or bad sample_size",
                      ldm_bundle_path(b));
        else {
            int f = 1 << (nv - 1);
            *def = ss * f;
            *mult = f;
            rc = 0;
        }
    }
    if (u) json_decref(u);
    if (v) json_decref(v);
    return rc;
}

int ldm_gen_check_bundle(const ldm_bundle *b, const ldm_gen_params *prm, ldm_sched_config *sc,
                         int *width, int *height) {
    if (!prm->prompt) return ldm_error("no prompt");
    if (prm->steps < 1 || prm->steps > 1000)
        return ldm_error("steps %d: expected 1..1000", prm->steps);
    if (!isfinite(prm->guidance)) return ldm_error("guidance scale is not a finite number");
    if (prm->batch < 0 || prm->batch > 64) return ldm_error("batch %d: expected 1..64", prm->batch);
    if (prm->clip_skip < 0 || prm->clip_skip > 12)
        return ldm_error("clip skip %d: expected 1..12", prm->clip_skip);
    int def, m;
    if (bundle_geometry(b, &def, &m)) return -1;
    int W = prm->width ? prm->width : def, H = prm->height ? prm->height : def;
    if (W < m || H < m || W % m || H % m || W > 8192 || H > 8192)
        return ldm_error("size %dx%d: this model needs width and height in multiples of %d "
                         "(%d..8192)", W, H, m, m);
    if (width) *width = W;
    if (height) *height = H;
    if (ldm_gen_sched_config(b, prm, sc)) return -1;
    /* build it once: schedules that do not fit (e.g. too many steps) fail here */
    ldm_sched *s = ldm_sched_new(sc, prm->steps);
    if (!s) return -1;
    ldm_sched_free(s);
    return 0;
}

int ldm_gen_check(const ldm_pipeline *p, const ldm_gen_params *prm, ldm_sched_config *sc) {
    return ldm_gen_check_bundle(p->bundle, prm, sc, NULL, NULL);
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

/* Tokenize text into ids[T]; *trunc set when cut. */
static int tokenize(ldm_pipeline *p, const char *text, int32_t *ids, int T, int *trunc) {
    if (ldm_tokenize(p->tok, text, ids, T, trunc) < 0)
        return ldm_error_prefix("tokenizing \"%.40s%s\"", text, strlen(text) > 40 ? "..." : "");
    return 0;
}

int ldm_generate(ldm_pipeline *p, const ldm_gen_params *prm, ldm_gen_result *res) {
    memset(res, 0, sizeof *res);
    double t0 = now_s();
    if (ldm_gen_check(p, prm, &res->sched)) return -1;
    const int B = prm->batch ? prm->batch : 1;
    const int W = prm->width ? prm->width : ldm_pipeline_default_size(p);
    const int H = prm->height ? prm->height : ldm_pipeline_default_size(p);
    const int f = ldm_vae_downscale(p->vae), h = H / f, w = W / f;
    const int C = ldm_unet_in_channels(p->unet);
    const int T = ldm_clip_max_length(p->clip), D = ldm_clip_hidden_size(p->clip);
    const size_t per = (size_t)C * h * w, n = (size_t)B * per, TD = (size_t)T * D;
    const int cfg = prm->guidance > 1.0;    /* do_classifier_free_guidance */
    const int NB = cfg ? 2 * B : B;         /* UNet batch */
    res->batch = B; res->width = W; res->height = H;
    res->latent_channels = C; res->latent_h = h; res->latent_w = w;

    ldm_sched *s = NULL;
    ldm_rng *rngs = NULL;
    float *ctx = NULL, *emb = NULL, *x = NULL, *xin = NULL, *eps = NULL, *img = NULL;
    int32_t *ids = NULL;
    int rc = -1;

    /* one arena for the three models at this size */
    size_t need = ldm_clip_arena_bytes(p->clip, 2);
    size_t u = ldm_unet_arena_bytes(p->unet, NB, h, w, T);
    size_t v = ldm_vae_arena_bytes(p->vae, 1, h, w);
    if (u > need) need = u;
    if (v > need) need = v;
    if (arena_reserve(p, need)) goto done;

    /* ---- text ---- */
    ids = ldm_xmalloc(sizeof(int32_t) * 2 * T);
    emb = ldm_xmalloc(sizeof(float) * 2 * TD);   /* [neg; prompt] */
    int32_t *neg_ids = ids, *pos_ids = ids + T;
    if (tokenize(p, prm->prompt, pos_ids, T, &res->prompt_truncated)) goto done;
    if (cfg && tokenize(p, prm->negative ? prm->negative : "", neg_ids, T,
                        &res->negative_truncated)) goto done;
    {
        ldm_encode_fn enc = prm->encode;
        int skip = prm->clip_skip > 1 ? prm->clip_skip : 1;
        int r;
        if (!enc && cfg && skip == 1) {
            r = ldm_pipeline_encode_text(p, ids, 2, 1, emb);          /* both in one batch */
        } else {
            r = enc ? enc(prm->encode_user, p, pos_ids, 1, skip, emb + TD)
                    : ldm_pipeline_encode_text(p, pos_ids, 1, skip, emb + TD);
            if (!r && cfg)
                r = enc ? enc(prm->encode_user, p, neg_ids, 1, 1, emb)
                        : ldm_pipeline_encode_text(p, neg_ids, 1, 1, emb);
        }
        if (r) { ldm_error_prefix("text encoder"); goto done; }
    }
    /* UNet context [NB, T, D]: cfg ? [neg x B; prompt x B] : [prompt x B] */
    ctx = ldm_xmalloc(sizeof(float) * NB * TD);
    for (int i = 0; i < NB; i++) {
        const float *src = (cfg && i < B) ? emb : emb + TD;
        memcpy(ctx + i * TD, src, TD * sizeof(float));
    }
    double t1 = now_s();
    res->t_text = t1 - t0;

    /* ---- latents ---- */
    if (!(s = ldm_sched_new(&res->sched, prm->steps))) goto done;
    res->unet_evaluations = s->n_timesteps;
    rngs = ldm_xcalloc((size_t)B, sizeof *rngs);
    x = ldm_xmalloc(sizeof(float) * n);
    for (int b = 0; b < B; b++) {
        ldm_rng_seed(&rngs[b], prm->seed + (uint64_t)b);
        ldm_rng_randn(&rngs[b], x + b * per, per);
    }
    if (prm->keep_latents) {
        res->latents_init = ldm_xmalloc(sizeof(float) * n);
        memcpy(res->latents_init, x, sizeof(float) * n);
    }
    for (size_t k = 0; k < n; k++) x[k] = x[k] * s->init_noise_sigma;

    /* ---- denoising loop ---- */
    xin = ldm_xmalloc(sizeof(float) * NB * per);
    eps = ldm_xmalloc(sizeof(float) * NB * per);
    const float g = (float)prm->guidance;
    for (int i = 0; i < s->n_timesteps; i++) {
        if (prm->interrupt && *prm->interrupt) {
            res->interrupted = 1;
            ldm_error("interrupted after %d of %d steps", i, s->n_timesteps);
            goto done;
        }
        /* latent_model_input = cat([x] * 2) if cfg; scale_model_input */
        ldm_sched_scale_model_input(s, i, xin, x, n);
        if (cfg) memcpy(xin + n, xin, n * sizeof(float));
        if (ldm_unet_forward(p->unet, &p->arena, xin, s->timesteps[i], ctx, NB, h, w, T, eps)) {
            ldm_error_prefix("unet, step %d", i + 1);
            goto done;
        }
        if (cfg) {
            /* eps = uncond + g * (cond - uncond) */
            for (size_t k = 0; k < n; k++) eps[k] = eps[k] + g * (eps[n + k] - eps[k]);
        }
        if (ldm_sched_step(s, i, eps, x, B, per, rngs)) goto done;
        if (prm->progress) prm->progress(prm->progress_user, i + 1, s->n_timesteps);
    }
    if (prm->keep_latents) {
        res->latents_final = ldm_xmalloc(sizeof(float) * n);
        memcpy(res->latents_final, x, sizeof(float) * n);
    }
    double t2 = now_s();
    res->t_sampling = t2 - t1;
    if (prm->interrupt && *prm->interrupt) {
        res->interrupted = 1;
        ldm_error("interrupted before decoding");
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
        to_rgb8(img, H, W, res->rgb + (size_t)b * H * W * 3);
    }
    double t3 = now_s();
    res->t_decode = t3 - t2;
    res->t_total = t3 - t0;
    rc = 0;
done:
    if (rc) {
        free(res->rgb); res->rgb = NULL;
        free(res->latents_init); res->latents_init = NULL;
        free(res->latents_final); res->latents_final = NULL;
    }
    ldm_sched_free(s);
    free(rngs); free(ctx); free(emb); free(ids); free(x); free(xin); free(eps); free(img);
    return rc;
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
    if (res->batch > 1) sb_add(&b, ", Batch size: %d, Batch pos: %d", res->batch, i);
    if (prm->clip_skip > 1) sb_add(&b, ", Clip skip: %d", prm->clip_skip);
    if (res->sched.kind == LDM_SCHED_DDIM && res->sched.eta > 0) {
        fmt_num(g, sizeof g, res->sched.eta);
        sb_add(&b, ", Eta DDIM: %s", g);
    }
    if (prm->spacing >= 0)
        sb_add(&b, ", Timestep spacing: %s", ldm_spacing_name(res->sched.timestep_spacing));
    sb_add(&b, ", Version: ldm %s", LDM_VERSION);
    return b.s;
}
