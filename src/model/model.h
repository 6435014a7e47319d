/* model.h - the three networks of a latent diffusion model, loaded from a bundle.
 *
 * Each loader reads its component's config.json from the bundle, checks every count in
 * it against core/limits.h, checks every weight it needs (name and shape), and prepares
 * them for the backend.  Forward functions
 * take and return HOST float32 arrays; inside they reset and use the arena.
 * Each model reports the arena bytes it needs for a shape via a dry run
 * (ldm_*_arena_bytes), so the caller sizes one arena once per resolution.
 */
#ifndef LDM_MODEL_H
#define LDM_MODEL_H

#include "backend/ops.h"
#include "format/bundle.h"

/* ---- CLIP text encoder (transformers CLIPTextModel) ---- */
typedef struct ldm_clip ldm_clip;
ldm_clip *ldm_clip_load(const ldm_bundle *b, ldm_backend *be);
/* A weightless text encoder from config.json text, on the dry backend only (memory
 * planning, config checks).  NULL + ldm_error if refused. */
ldm_clip *ldm_clip_from_config(const char *config_json);
void ldm_clip_free(ldm_clip *m);
int ldm_clip_hidden_size(const ldm_clip *m);
int ldm_clip_max_length(const ldm_clip *m);  /* max_position_embeddings, 77 */
size_t ldm_clip_arena_bytes(const ldm_clip *m, int B);
/* ids[B, T] (T = max length) -> out[B, T, hidden].  clip_skip: 1 = last layer,
 * 2 = penultimate, ...; the final layer norm is applied in every case. */
int ldm_clip_encode(ldm_clip *m, ldm_arena *a, const int32_t *ids, int B, int clip_skip,
                    float *out);

/* The weights each model's config needs, in loading order: fn(user, name, ndim, shape)
 * once per tensor (bundle names: "unet.conv_in.weight", ...; the VAE's include its
 * encoder).  0, or -1 with ldm_error when the config is refused.  For ldmpack
 * --random-weights. */
typedef void (*ldm_weight_list_fn)(void *user, const char *name, int ndim, const int64_t *shape);
int ldm_clip_list_weights(const char *config_json, ldm_weight_list_fn fn, void *user);
int ldm_unet_list_weights(const char *config_json, ldm_weight_list_fn fn, void *user);
int ldm_vae_list_weights(const char *config_json, ldm_weight_list_fn fn, void *user);

/* ---- UNet (diffusers UNet2DConditionModel, SD 1.x / 2.x family) ---- */
typedef struct ldm_unet ldm_unet;
ldm_unet *ldm_unet_load(const ldm_bundle *b, ldm_backend *be);
void ldm_unet_free(ldm_unet *m);
/* A weightless UNet from config.json text, on the dry backend only: for memory planning
 * (ldm_unet_arena_bytes) of a model without its weights.  NULL + ldm_error if refused. */
ldm_unet *ldm_unet_from_config(const char *config_json);
/* Rows per feed-forward chunk (0 = automatic); for tests and tuning. */
void ldm_unet_set_ff_chunk(ldm_unet *m, int rows);
int ldm_unet_in_channels(const ldm_unet *m);
int ldm_unet_out_channels(const ldm_unet *m);
int ldm_unet_sample_size(const ldm_unet *m);
int ldm_unet_context_dim(const ldm_unet *m);
size_t ldm_unet_arena_bytes(const ldm_unet *m, int B, int H, int W, int T);
/* x[B, Cin, H, W], timestep t (same for the batch), ctx[B, T, context_dim]
 * -> out[B, Cout, H, W]. */
int ldm_unet_forward(ldm_unet *m, ldm_arena *a, const float *x, float t, const float *ctx,
                     int B, int H, int W, int T, float *out);

/* ---- VAE decoder (diffusers AutoencoderKL) ---- */
typedef struct ldm_vae ldm_vae;
ldm_vae *ldm_vae_load(const ldm_bundle *b, ldm_backend *be);
/* A weightless VAE decoder from config.json text, on the dry backend only. */
ldm_vae *ldm_vae_from_config(const char *config_json);
void ldm_vae_free(ldm_vae *m);
float ldm_vae_scaling_factor(const ldm_vae *m);
int ldm_vae_latent_channels(const ldm_vae *m);
int ldm_vae_downscale(const ldm_vae *m);   /* 2^(len(block_out_channels)-1), 8 for SD */
size_t ldm_vae_arena_bytes(const ldm_vae *m, int B, int h, int w);
/* z[B, latent_channels, h, w] (already divided by scaling_factor)
 * -> img[B, 3, h*f, w*f] in [-1, 1] (not clamped). */
int ldm_vae_decode(ldm_vae *m, ldm_arena *a, const float *z, int B, int h, int w, float *img);
/* The encoder (image to image): present when the bundle has vae.encoder.* weights.
 * img[3, H, W] in [-1, 1] (H, W multiples of the downscale) -> moments[2 * latent, H/f,
 * W/f]: the latent distribution's mean, then its log-variance (after quant_conv). */
int ldm_vae_has_encoder(const ldm_vae *m);
size_t ldm_vae_encode_arena_bytes(const ldm_vae *m, int H, int W);
int ldm_vae_encode(ldm_vae *m, ldm_arena *a, const float *img, int H, int W, float *moments);

#endif
