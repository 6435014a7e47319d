/* pipeline.h - text to image, as diffusers' StableDiffusionPipeline does it.
 *
 *   prompt, negative --tokenizer--> ids[77] --CLIP--> embeddings [2, 77, C]
 *       (the plain syntax; in AUTOMATIC1111's, model/prompt.h, each text is chunks of 77
 *       ids, each chunk encoded, weighted and concatenated: [2, 77 * chunks, C], the
 *       shorter of the two padded with the empty prompt's chunk)
 *   latents = randn[B, 4, H/8, W/8] (one generator per image, seeded S, S+1, ...)
 *             * init_noise_sigma
 *   for each timestep t:
 *       eps[uncond; cond] = UNet(scale_model_input([x; x]), t, [neg; prompt])
 *       eps = uncond + g * (cond - uncond)      (g <= 1: the conditional branch alone)
 *       x = scheduler.step(eps, t, x)
 *   image = VAE.decode(x / scaling_factor); rgb = round(clamp(image/2 + 0.5, 0, 1) * 255)
 *
 * An ldm_pipeline is made in two steps.  ldm_pipeline_new reads what the configs say
 * once (tokenizer, geometry, the scheduler config per class), so parameters can be
 * checked (ldm_gen_check) before any weight is touched; ldm_pipeline_load then loads the
 * three models on a backend.  The pipeline keeps one activation arena sized for the
 * largest model at the current resolution and batch (dry runs cached per batch and
 * size; the arena grows only when needed).
 *
 * ldm_generate takes a parameter struct and fills a result struct (images, timings);
 * a progress callback and an interrupt flag are checked between steps.  Text comes in
 * as diffusers' prompt_embeds / negative_prompt_embeds when the caller has them (the
 * app encodes through its cache with ldm_pipeline_encode_text), else the pipeline
 * tokenizes and encodes the prompt itself.  Every failure, a backend's included, is
 * returned as an ldm_status with the message in ldm_last_error().
 */
#ifndef LDM_PIPELINE_H
#define LDM_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "backend/ops.h"
#include "core/common.h"
#include "format/bundle.h"
#include "model/prompt.h"
#include "model/tokenizer.h"
#include "pipeline/scheduler.h"

typedef struct ldm_pipeline ldm_pipeline;

/* The tokenizer of a bundle (its tokenizer/ members).  NULL + ldm_error on failure. */
ldm_tokenizer *ldm_bundle_tokenizer(const ldm_bundle *b);

/* The tokenizer and configs of an open bundle, no weights.  The pipeline takes
 * ownership of b (also on failure).  NULL + ldm_error (kind LDM_DATA). */
ldm_pipeline *ldm_pipeline_new(ldm_bundle *b);
/* Load the three models on `be` (borrowed: it must outlive the pipeline). */
int ldm_pipeline_load(ldm_pipeline *p, ldm_backend *be);
/* Open a bundle, ldm_pipeline_new, ldm_pipeline_load.  NULL + ldm_error. */
ldm_pipeline *ldm_pipeline_open(const char *bundle_path, ldm_backend *be);
void ldm_pipeline_close(ldm_pipeline *p);
/* The backend of a loaded pipeline, else NULL. */
ldm_backend *ldm_pipeline_backend(const ldm_pipeline *p);

const ldm_bundle *ldm_pipeline_bundle(const ldm_pipeline *p);
const ldm_tokenizer *ldm_pipeline_tokenizer(const ldm_pipeline *p);
/* Whether the UNet is an inpainting one (in_channels = 2 * latent channels + 1, 9 for SD):
 * such a model generates only with an init image and a mask. */
int ldm_pipeline_is_inpaint(const ldm_pipeline *p);
/* Default image side in pixels: unet sample_size * VAE downscale (512 for SD 1.x). */
int ldm_pipeline_default_size(const ldm_pipeline *p);
/* The VAE downscale factor (8); sizes must be multiples of it, see ldm_gen_check_bundle. */
int ldm_pipeline_size_multiple(const ldm_pipeline *p);
/* Token sequence length (77) and text embedding width (768 for SD 1.x; 0 before load). */
int ldm_pipeline_text_length(const ldm_pipeline *p);
int ldm_pipeline_text_dim(const ldm_pipeline *p);

/* The cacheable text-encoder step: ids[B, T] -> out[B, T, C] (T, C as above).
 * clip_skip as AUTOMATIC1111 counts it: 1 (or 0) = last layer, 2 = penultimate, ... */
int ldm_pipeline_encode_text(ldm_pipeline *p, const int32_t *ids, int B, int clip_skip,
                             float *out);

/* The text encoder for one chunk: ids[T] at clip_skip -> out[T, C], as
 * ldm_pipeline_encode_text computes it (the app's cache gives the same floats); `what`
 * ("prompt", "negative prompt, chunk 2 of 3") names it in messages.  0 or -1 with ldm_error. */
typedef int (*ldm_chunk_encoder)(void *user, ldm_pipeline *p, const int32_t *ids, int clip_skip,
                                 const char *what, float *out);

/* The text of a generation as the UNet takes it (diffusers' prompt_embeds and
 * negative_prompt_embeds). */
typedef struct ldm_text_embeds {
    float *prompt, *negative;   /* [tokens, C] each; negative NULL when guidance <= 1 */
    int tokens;                 /* 77 * chunks, the same for both */
    int prompt_chunks, negative_chunks;   /* each text's own chunks, before padding */
    int pad_conds;              /* the shorter was padded with the empty prompt's chunk
                                   (A1111's "Pad prompt/negative prompt", "Pad conds") */
    int prompt_truncated, negative_truncated;   /* plain syntax: tokens were cut */
} ldm_text_embeds;

struct ldm_gen_params;
/* The embeddings of prm's prompt and (with guidance > 1) negative prompt in prm's syntax:
 * tokenized (model/prompt.h), each chunk encoded by enc (NULL: ldm_pipeline_encode_text)
 * and weighted, the chunks concatenated.  Clip skip: in the A1111 syntax for both texts
 * (as A1111 applies it to every text); in the plain syntax for the prompt only (as
 * diffusers' encode_prompt).  The two are padded to the same number of chunks with the
 * empty prompt's chunk, at their clip skip.  LDM_OK, or the failure (a bad prompt:
 * LDM_USAGE, naming it; weights whose embedding is not finite: LDM_USAGE).  The caller
 * frees *out with ldm_text_embeds_free (also after a failure). */
ldm_status ldm_pipeline_embed_text(ldm_pipeline *p, const struct ldm_gen_params *prm,
                                   ldm_chunk_encoder enc, void *user, ldm_text_embeds *out);
void ldm_text_embeds_free(ldm_text_embeds *t);

/* After each denoising step: step 1..total (total = steps). */
typedef void (*ldm_progress_fn)(void *user, int step, int total);

typedef struct ldm_gen_params {
    const char *prompt;
    const char *negative;      /* NULL = "" */
    int width, height;         /* 0 = ldm_pipeline_default_size */
    int steps;                 /* inference steps, 1..1000 */
    double guidance;           /* classifier-free guidance scale; <= 1 disables it */
    uint64_t seed;             /* image i uses seed + i (mod 2^64) */
    int batch;                 /* images, >= 1 (0 = 1) */
    int clip_skip;             /* 0/1 = last layer, 2 = penultimate (plain syntax: prompt only,
                                  as diffusers; A1111 syntax: both texts, as A1111) */
    int prompt_syntax;         /* LDM_SYNTAX_PLAIN (0, diffusers) or LDM_SYNTAX_A1111 */
    int scheduler;             /* ldm_sched_kind, or -1 = the bundle's class */
    int karras;                /* Karras sigmas (Euler, DPM++ only) */
    double eta;                /* DDIM eta (DDIM only; 0 = deterministic) */
    int spacing;               /* ldm_spacing override, or -1 = the bundle's config */
    int final_sigmas;          /* DPM++: ldm_final_sigmas override, or -1 = the config's
                                * final_sigmas_type (default zero, as diffusers >= 0.26) */
    /* diffusers' prompt_embeds / negative_prompt_embeds: [text_tokens, C] each on the
     * host, or NULL to tokenize and encode prompt/negative here (negative_embeds is needed
     * when guidance > 1); text_tokens 0 = 77 (one chunk), at most 77 * LDM_MAX_PROMPT_CHUNKS */
    const float *prompt_embeds, *negative_embeds;
    int text_tokens;
    /* image to image (StableDiffusionImg2ImgPipeline): the preprocessed image [3, H, W] in
     * [-1, 1] on the host (H, W = height, width), and the strength in (0, 1]; NULL for
     * text to image */
    const float *init_image;
    double strength;
    /* inpainting (StableDiffusionInpaintPipeline), with init_image: the preprocessed mask
     * [H, W], 1 = repaint, 0 = keep (binarised: ldm_mask_preprocess); NULL for none.  An
     * inpainting UNet (in_channels 9) gets it with the masked image's latents at every
     * step; an ordinary one keeps the init image's noised latents outside the mask.
     * diffusers' default strength here is 1.0 (the caller sets it). */
    const float *mask;
    ldm_progress_fn progress;  /* called after each step (step 1..total), may be NULL */
    void *progress_user;
    const volatile int *interrupt; /* when it becomes non-zero, stop between steps */
    int keep_latents;          /* also return latents_init / latents_final */
} ldm_gen_params;

/* A zeroed parameter struct with the defaults: 50 steps, guidance 7.5, batch 1,
 * scheduler -1, spacing -1, final_sigmas -1, strength 0.8 (used with an init image). */
ldm_gen_params ldm_gen_params_default(void);

typedef struct ldm_gen_result {
    int batch, width, height;
    uint8_t *rgb;              /* [batch, height, width, 3] */
    float *latents_init;       /* [batch, 4, h, w] raw randn (keep_latents) */
    float *latents_final;      /* [batch, 4, h, w] after the last step (keep_latents) */
    int latent_channels, latent_h, latent_w;
    int unet_evaluations;      /* timesteps run (PNDM: steps + 1; image to image: the cut schedule) */
    double t_text, t_sampling, t_decode, t_total;   /* seconds */
    double gflop_text, gflop_sampling, gflop_decode; /* the products' work in each */
    int prompt_truncated, negative_truncated;
    int text_tokens;           /* the UNet's context length (77 * chunks) */
    int pad_conds;             /* prompt and negative padded to the same chunks (the
                                  caller sets it when it gave the embeddings) */
    int interrupted;           /* stopped by the interrupt flag (the call returned -1) */
    ldm_sched_config sched;    /* the effective scheduler configuration */
} ldm_gen_result;

/* Check the parameters against the limits and the configs and build the effective
 * scheduler configuration (and the schedule once), without loading any weights: lets a
 * front end reject bad input (size not a multiple of the VAE factor, --karras with DDIM,
 * too many steps for the schedule, ...) before the heavy work.  *width and *height (may
 * be NULL) get the size that will be used.  Errors name the parameter; their kind is
 * LDM_USAGE, or LDM_DATA when the bundle's config is at fault. */
int ldm_gen_check(ldm_pipeline *p, const ldm_gen_params *prm, ldm_sched_config *sc, int *width,
                  int *height);
/* Only the scheduler part: the bundle's scheduler config read as prm->scheduler's class,
 * with prm's karras, eta and spacing applied. */
int ldm_gen_sched_config(ldm_pipeline *p, const ldm_gen_params *prm, ldm_sched_config *sc);

/* Generate.  LDM_OK, or the failure's kind with ldm_error (res->interrupted when
 * interrupted).  A non-finite latent or image is a failure (LDM_RUNTIME).  The result
 * is owned by the caller: ldm_gen_result_free. */
ldm_status ldm_generate(ldm_pipeline *p, const ldm_gen_params *prm, ldm_gen_result *res);
void ldm_gen_result_free(ldm_gen_result *r);

/* AUTOMATIC1111's "parameters" text for image i of a result:
 *   prompt\nNegative prompt: ...\nSteps: 50, Sampler: Euler a, CFG scale: 7.5, Seed: 42,
 *   Size: 512x512, Model hash: 0123456789, Model: name, Clip skip: 2, Version: ldm 0.1.0
 * (Negative prompt line only when non-empty; Clip skip only when > 1; "Pad conds: True"
 * when res->pad_conds, as A1111 writes it when it pads).  malloc'd. */
char *ldm_a1111_parameters(const ldm_gen_params *prm, const ldm_gen_result *res, int i,
                           const char *model_hash, const char *model_name);

#endif
