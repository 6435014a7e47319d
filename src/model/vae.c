/* vae.c - diffusers' AutoencoderKL on the ops interface: the decoder, and the encoder
 * for image-to-image (loaded when the bundle has its weights).
 *
 *   z [B, latent, h, w] -> post_quant_conv (1x1) -> decoder.conv_in (3x3)
 *   -> mid_block: resnet, attention (one head over all channels), resnet
 *   -> up_blocks (block_out_channels reversed; layers_per_block+1 resnets each,
 *      then nearest 2x + 3x3 conv, except the last block)
 *   -> conv_norm_out (GroupNorm) + SiLU -> conv_out -> img [B, out, h*f, w*f], f = 2^(blocks-1).
 * ResnetBlock2D: x + conv2(silu(norm2(conv1(silu(norm1(x)))))), with a 1x1 conv_shortcut
 * on x when the channel count changes; GroupNorm eps is 1e-6 throughout.
 *
 * Batch items are decoded one at a time (nothing in the decoder mixes them), so the
 * arena holds one image's activations: three ping-pong buffers of the largest
 * activation plus the mid-block attention's q/k/v at latent resolution.
 * Encoder: img [3, H, W] -> conv_in -> down_blocks (layers_per_block resnets each, then
 * (except the last) zero padding right and bottom by one and a 3x3 stride-2 conv)
 * -> mid_block (resnet, attention, resnet) -> GroupNorm + SiLU -> conv_out (2 * latent
 * channels: mean and log-variance) -> quant_conv (1x1) -> moments [2 * latent, H/f, W/f].
 * Tensor names are "vae." + the diffusers state-dict key; the mid-block attention may use
 * either current (to_q/to_k/to_v/to_out.0) or older (query/key/value/proj_attn) names.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/limits.h"
#include "model/config.h"
#include "model/model.h"

#define MEMBER "vae/config.json"
#define MAX_BLOCKS LDM_MAX_BLOCKS
#define GN_EPS 1e-6f

typedef struct {
    int cin, cout;
    ldm_tensor *norm1_w, *norm1_b, *conv1_w, *conv1_b;
    ldm_tensor *norm2_w, *norm2_b, *conv2_w, *conv2_b;
    ldm_tensor *sc_w, *sc_b; /* NULL when cin == cout */
} vae_resnet;

typedef struct {
    ldm_tensor *gn_w, *gn_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
} vae_attn;

typedef struct {
    int n_res;
    vae_resnet *res;
    ldm_tensor *up_w, *up_b; /* NULL for the last block */
} vae_up;

typedef struct {
    int n_res;
    vae_resnet *res;
    ldm_tensor *down_w, *down_b; /* NULL for the last block */
} vae_down;

typedef struct {
    int present;             /* the bundle has the encoder's weights */
    int in_ch, use_qc;
    ldm_tensor *in_w, *in_b;
    vae_down down[MAX_BLOCKS];
    vae_resnet mid_res[2];
    vae_attn mid_attn;
    ldm_tensor *norm_out_w, *norm_out_b, *out_w, *out_b;
    ldm_tensor *qc_w, *qc_b; /* NULL when use_quant_conv is false */
} vae_encoder;

struct ldm_vae {
    ldm_backend *be;
    int owns_be;             /* ldm_vae_from_config: a dry handle of its own */
    void *weights;           /* the backend's copy of the weights, or NULL */
    int latent, out_ch, n_blocks, layers, groups, has_attn, use_pq;
    int block_out[MAX_BLOCKS];
    float scaling;
    ldm_tensor *pq_w, *pq_b; /* NULL when use_post_quant_conv is false */
    ldm_tensor *in_w, *in_b;
    vae_resnet mid_res[2];
    vae_attn mid_attn;
    vae_up up[MAX_BLOCKS];
    ldm_tensor *norm_out_w, *norm_out_b, *out_w, *out_b;
    vae_encoder enc;
};

/* ---- loading ---- */

/* Every count is bounded (core/limits.h) before anything is allocated from it. */
static int parse_config(ldm_vae *m, json_t *j) {
    int rc = -1, n_types = 0;
    const char *types[MAX_BLOCKS], *act, *cls;
    float shift;
    if (cfg_str_or(j, MEMBER, "_class_name", "AutoencoderKL", &cls) ||
        cfg_count(j, MEMBER, "latent_channels", 1, LDM_MAX_CHANNELS, &m->latent) ||
        cfg_count(j, MEMBER, "out_channels", 1, LDM_MAX_CHANNELS, &m->out_ch) ||
        cfg_count_list(j, MEMBER, "block_out_channels", m->block_out, MAX_BLOCKS, &m->n_blocks, 1,
                       LDM_MAX_CHANNELS) ||
        cfg_count(j, MEMBER, "layers_per_block", 0, LDM_MAX_LAYERS, &m->layers) ||
        cfg_count(j, MEMBER, "norm_num_groups", 1, LDM_MAX_CHANNELS, &m->groups) ||
        cfg_str_list(j, MEMBER, "up_block_types", types, MAX_BLOCKS, &n_types) ||
        cfg_str_or(j, MEMBER, "act_fn", "silu", &act) ||
        cfg_float_or(j, MEMBER, "scaling_factor", 0.18215f, &m->scaling) ||
        cfg_float_or(j, MEMBER, "shift_factor", 0.0f, &shift) ||
        cfg_bool_or(j, MEMBER, "mid_block_add_attention", 1, &m->has_attn) ||
        cfg_bool_or(j, MEMBER, "use_post_quant_conv", 1, &m->use_pq))
        goto out;
    if (strcmp(cls, "AutoencoderKL")) {
        ldm_error("%s: field \"_class_name\": \"%s\" is not supported (expected "
                  "\"AutoencoderKL\")", MEMBER, cls);
        goto out;
    }
    if (strcmp(act, "silu") && strcmp(act, "swish")) {
        ldm_error("%s: field \"act_fn\": \"%s\" is not supported (expected \"silu\")", MEMBER,
                  act);
        goto out;
    }
    if (shift != 0.0f) {
        ldm_error("%s: field \"shift_factor\": %g is not supported (expected 0 or null)",
                  MEMBER, shift);
        goto out;
    }
    if (m->n_blocks < 1) {
        ldm_error("%s: field \"block_out_channels\": expected at least one entry", MEMBER);
        goto out;
    }
    if (n_types != m->n_blocks) {
        ldm_error("%s: field \"up_block_types\" has %d entries but \"block_out_channels\" has %d",
                  MEMBER, n_types, m->n_blocks);
        goto out;
    }
    for (int i = 0; i < n_types; i++)
        if (strcmp(types[i], "UpDecoderBlock2D")) {
            ldm_error("%s: field \"up_block_types[%d]\": \"%s\" is not supported (expected "
                      "\"UpDecoderBlock2D\")", MEMBER, i, types[i]);
            goto out;
        }
    if (m->latent <= 0 || m->out_ch <= 0 || m->layers < 0 || m->groups <= 0) {
        ldm_error("%s: fields \"latent_channels\" (%d), \"out_channels\" (%d), "
                  "\"layers_per_block\" (%d), \"norm_num_groups\" (%d) must be positive",
                  MEMBER, m->latent, m->out_ch, m->layers, m->groups);
        goto out;
    }
    for (int i = 0; i < m->n_blocks; i++)
        if (m->block_out[i] <= 0 || m->block_out[i] % m->groups) {
            ldm_error("%s: field \"block_out_channels[%d]\" (%d) is not a positive multiple of "
                      "\"norm_num_groups\" (%d)", MEMBER, i, m->block_out[i], m->groups);
            goto out;
        }
    rc = 0;
out:
    return rc;
}

static void load_resnet(ldm_loader *L, vae_resnet *r, int cin, int cout, const char *pfx) {
    r->cin = cin;
    r->cout = cout;
#define RW(shape, name) ldm_load_weight(L, shape, "%s." name, pfx)
    r->norm1_w = RW(LDM_VEC(cin), "norm1.weight");
    r->norm1_b = RW(LDM_VEC(cin), "norm1.bias");
    r->conv1_w = RW(LDM_CONV(cout, cin, 3), "conv1.weight");
    r->conv1_b = RW(LDM_VEC(cout), "conv1.bias");
    r->norm2_w = RW(LDM_VEC(cout), "norm2.weight");
    r->norm2_b = RW(LDM_VEC(cout), "norm2.bias");
    r->conv2_w = RW(LDM_CONV(cout, cout, 3), "conv2.weight");
    r->conv2_b = RW(LDM_VEC(cout), "conv2.bias");
    if (cin != cout) {
        r->sc_w = RW(LDM_CONV(cout, cin, 1), "conv_shortcut.weight");
        r->sc_b = RW(LDM_VEC(cout), "conv_shortcut.bias");
    }
#undef RW
}

static void load_attn(ldm_loader *L, vae_attn *t, int C, const char *pfx) {
    char probe[256];
    snprintf(probe, sizeof probe, "%s.to_q.weight", pfx);
    int old = L->b && !ldm_bundle_tensor(L->b, probe);   /* !L->b: weightless */
    if (old) { /* converted by older diffusers: fall back only if those names exist */
        snprintf(probe, sizeof probe, "%s.query.weight", pfx);
        old = ldm_bundle_tensor(L->b, probe) != NULL;
    }
    const char *q = old ? "query" : "to_q", *k = old ? "key" : "to_k",
               *v = old ? "value" : "to_v", *o = old ? "proj_attn" : "to_out.0";
    t->gn_w = ldm_load_weight(L, LDM_VEC(C), "%s.group_norm.weight", pfx);
    t->gn_b = ldm_load_weight(L, LDM_VEC(C), "%s.group_norm.bias", pfx);
    t->q_w = ldm_load_weight(L, LDM_MAT(C, C), "%s.%s.weight", pfx, q);
    t->q_b = ldm_load_weight(L, LDM_VEC(C), "%s.%s.bias", pfx, q);
    t->k_w = ldm_load_weight(L, LDM_MAT(C, C), "%s.%s.weight", pfx, k);
    t->k_b = ldm_load_weight(L, LDM_VEC(C), "%s.%s.bias", pfx, k);
    t->v_w = ldm_load_weight(L, LDM_MAT(C, C), "%s.%s.weight", pfx, v);
    t->v_b = ldm_load_weight(L, LDM_VEC(C), "%s.%s.bias", pfx, v);
    t->o_w = ldm_load_weight(L, LDM_MAT(C, C), "%s.%s.weight", pfx, o);
    t->o_b = ldm_load_weight(L, LDM_VEC(C), "%s.%s.bias", pfx, o);
}

/* The encoder's own config fields and weights, when the bundle has them (a decoder-only
 * bundle can still generate from text).  0, or -1 with the loader failed. */
static int load_encoder(ldm_vae *m, const ldm_bundle *b, ldm_loader *L, json_t *j) {
    vae_encoder *e = &m->enc;
    /* a weight list (L->want) includes the encoder */
    if (b ? !ldm_bundle_tensor(b, "vae.encoder.conv_in.weight") : !L->want) return 0;
    const char *types[MAX_BLOCKS];
    int n_types = 0, double_z = 1, rc = -1;
    if (cfg_int_or(j, MEMBER, "in_channels", 3, &e->in_ch) ||
        cfg_bool_or(j, MEMBER, "use_quant_conv", 1, &e->use_qc) ||
        cfg_bool_or(j, MEMBER, "double_z", 1, &double_z) ||
        cfg_str_list(j, MEMBER, "down_block_types", types, MAX_BLOCKS, &n_types))
        goto out;
    if (n_types != m->n_blocks) {
        ldm_error("%s: field \"down_block_types\" has %d entries but \"block_out_channels\" has %d",
                  MEMBER, n_types, m->n_blocks);
        goto out;
    }
    for (int i = 0; i < n_types; i++)
        if (strcmp(types[i], "DownEncoderBlock2D")) {
            ldm_error("%s: field \"down_block_types[%d]\": \"%s\" is not supported (expected "
                      "\"DownEncoderBlock2D\")", MEMBER, i, types[i]);
            goto out;
        }
    if (e->in_ch != 3) {
        ldm_error("%s: field \"in_channels\": %d is not supported (expected 3)", MEMBER, e->in_ch);
        goto out;
    }
    rc = 0;
out:
    if (rc) { L->failed = 1; return -1; }
    const int Z2 = 2 * m->latent, c0 = m->block_out[0], top = m->block_out[m->n_blocks - 1];
    char pfx[256];
    e->in_w = ldm_load_weight(L, LDM_CONV(c0, 3, 3), "vae.encoder.conv_in.weight");
    e->in_b = ldm_load_weight(L, LDM_VEC(c0), "vae.encoder.conv_in.bias");
    int cin = c0;
    for (int i = 0; i < m->n_blocks && !L->failed; i++) {
        vae_down *d = &e->down[i];
        const int cout = m->block_out[i];
        d->n_res = m->layers;
        d->res = ldm_xcalloc((size_t)(d->n_res ? d->n_res : 1), sizeof *d->res);
        for (int r = 0; r < d->n_res; r++) {
            snprintf(pfx, sizeof pfx, "vae.encoder.down_blocks.%d.resnets.%d", i, r);
            load_resnet(L, &d->res[r], r == 0 ? cin : cout, cout, pfx);
        }
        if (i < m->n_blocks - 1) {
            d->down_w = ldm_load_weight(L, LDM_CONV(cout, cout, 3),
                                        "vae.encoder.down_blocks.%d.downsamplers.0.conv.weight", i);
            d->down_b = ldm_load_weight(L, LDM_VEC(cout),
                                        "vae.encoder.down_blocks.%d.downsamplers.0.conv.bias", i);
        }
        cin = cout;
    }
    for (int i = 0; i < 2; i++) {
        snprintf(pfx, sizeof pfx, "vae.encoder.mid_block.resnets.%d", i);
        load_resnet(L, &e->mid_res[i], top, top, pfx);
    }
    if (m->has_attn) load_attn(L, &e->mid_attn, top, "vae.encoder.mid_block.attentions.0");
    e->norm_out_w = ldm_load_weight(L, LDM_VEC(top), "vae.encoder.conv_norm_out.weight");
    e->norm_out_b = ldm_load_weight(L, LDM_VEC(top), "vae.encoder.conv_norm_out.bias");
    e->out_w = ldm_load_weight(L, LDM_CONV(double_z ? Z2 : m->latent, top, 3), "vae.encoder.conv_out.weight");
    e->out_b = ldm_load_weight(L, LDM_VEC(double_z ? Z2 : m->latent), "vae.encoder.conv_out.bias");
    if (!double_z && !L->failed) {
        ldm_error("%s: field \"double_z\": false is not supported (the encoder must give mean and "
                  "log-variance)", MEMBER);
        L->failed = 1;
    }
    if (e->use_qc) {
        e->qc_w = ldm_load_weight(L, LDM_CONV(Z2, Z2, 1), "vae.quant_conv.weight");
        e->qc_b = ldm_load_weight(L, LDM_VEC(Z2), "vae.quant_conv.bias");
    }
    e->present = !L->failed;
    return L->failed ? -1 : 0;
}

/* The model from a parsed config: weights from b, or weightless when b is NULL. */
static ldm_vae *vae_build(json_t *j, const ldm_bundle *b, ldm_backend *be, ldm_weight_list_fn want,
                          void *user) {
    ldm_vae *m = ldm_xcalloc(1, sizeof *m);
    m->be = be;
    int rc = parse_config(m, j);
    if (rc) { json_decref(j); free(m); return NULL; }
    ldm_loader L = {b, be, 0, NULL, 0, 0, want, user};
    const int Z = m->latent, top = m->block_out[m->n_blocks - 1];
    char pfx[256];
    if (m->use_pq) {
        m->pq_w = ldm_load_weight(&L, LDM_CONV(Z, Z, 1), "vae.post_quant_conv.weight");
        m->pq_b = ldm_load_weight(&L, LDM_VEC(Z), "vae.post_quant_conv.bias");
    }
    m->in_w = ldm_load_weight(&L, LDM_CONV(top, Z, 3), "vae.decoder.conv_in.weight");
    m->in_b = ldm_load_weight(&L, LDM_VEC(top), "vae.decoder.conv_in.bias");
    for (int i = 0; i < 2; i++) {
        snprintf(pfx, sizeof pfx, "vae.decoder.mid_block.resnets.%d", i);
        load_resnet(&L, &m->mid_res[i], top, top, pfx);
    }
    if (m->has_attn) load_attn(&L, &m->mid_attn, top, "vae.decoder.mid_block.attentions.0");
    int cin = top;
    for (int i = 0; i < m->n_blocks && !L.failed; i++) {
        vae_up *u = &m->up[i];
        const int cout = m->block_out[m->n_blocks - 1 - i];
        u->n_res = m->layers + 1;
        u->res = ldm_xcalloc((size_t)u->n_res, sizeof *u->res);
        for (int r = 0; r < u->n_res; r++) {
            snprintf(pfx, sizeof pfx, "vae.decoder.up_blocks.%d.resnets.%d", i, r);
            load_resnet(&L, &u->res[r], r == 0 ? cin : cout, cout, pfx);
        }
        if (i < m->n_blocks - 1) {
            u->up_w = ldm_load_weight(&L, LDM_CONV(cout, cout, 3),
                                      "vae.decoder.up_blocks.%d.upsamplers.0.conv.weight", i);
            u->up_b = ldm_load_weight(&L, LDM_VEC(cout),
                                      "vae.decoder.up_blocks.%d.upsamplers.0.conv.bias", i);
        }
        cin = cout;
    }
    const int c0 = m->block_out[0];
    m->norm_out_w = ldm_load_weight(&L, LDM_VEC(c0), "vae.decoder.conv_norm_out.weight");
    m->norm_out_b = ldm_load_weight(&L, LDM_VEC(c0), "vae.decoder.conv_norm_out.bias");
    m->out_w = ldm_load_weight(&L, LDM_CONV(m->out_ch, c0, 3), "vae.decoder.conv_out.weight");
    m->out_b = ldm_load_weight(&L, LDM_VEC(m->out_ch), "vae.decoder.conv_out.bias");
    if (!L.failed) load_encoder(m, b, &L, j);
    json_decref(j);
    if (ldm_loader_finish(&L, &m->weights)) { ldm_vae_free(m); return NULL; }
    return m;
}

ldm_vae *ldm_vae_load(const ldm_bundle *b, ldm_backend *be) {
    json_t *j = cfg_load(b, MEMBER);
    return j ? vae_build(j, b, be, NULL, NULL) : NULL;
}

static ldm_vae *vae_from_config(const char *config_json, ldm_weight_list_fn want, void *user) {
    json_t *j = cfg_parse(config_json, MEMBER);
    if (!j) return NULL;
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    ldm_vae *m = vae_build(j, NULL, dry, want, user);
    if (m) m->owns_be = 1;
    else ldm_backend_free(dry);
    return m;
}

ldm_vae *ldm_vae_from_config(const char *config_json) {
    return vae_from_config(config_json, NULL, NULL);
}

int ldm_vae_list_weights(const char *config_json, ldm_weight_list_fn fn, void *user) {
    ldm_vae *m = vae_from_config(config_json, fn, user);
    ldm_vae_free(m);
    return m ? 0 : -1;
}

void ldm_vae_free(ldm_vae *m) {
    if (!m) return;
    for (int i = 0; i < MAX_BLOCKS; i++) {
        free(m->up[i].res);
        free(m->enc.down[i].res);
    }
    ldm_be_release_weights(m->be, m->weights);
    if (m->owns_be) ldm_backend_free(m->be);
    free(m);
}

float ldm_vae_scaling_factor(const ldm_vae *m) { return m->scaling; }
int ldm_vae_latent_channels(const ldm_vae *m) { return m->latent; }
int ldm_vae_downscale(const ldm_vae *m) { return 1 << (m->n_blocks - 1); }

/* ---- forward ---- */

/* Largest activation (floats, one image) anywhere in the decoder for an h x w latent. */
static size_t max_activation(const ldm_vae *m, int h, int w) {
    size_t hw = (size_t)h * w, best = (size_t)m->latent * hw;
    size_t c = (size_t)m->block_out[m->n_blocks - 1];
    if (c * hw > best) best = c * hw;
    for (int i = 0; i < m->n_blocks; i++) {
        size_t cout = (size_t)m->block_out[m->n_blocks - 1 - i];
        if (cout * hw > best) best = cout * hw;
        if (i < m->n_blocks - 1) hw *= 4;
        if (cout * hw > best) best = cout * hw;
    }
    if ((size_t)m->out_ch * hw > best) best = (size_t)m->out_ch * hw;
    return best;
}

/* out[1, cout, HW] = resnet(x[1, cin, HW]); t is scratch of max(cin, cout) * HW floats. */
static void resnet_forward(ldm_backend *be, const vae_resnet *r, float *out,
                           const float *x, float *t, int groups, int H, int W) {
    const int HW = H * W;
    ldm_op_group_norm(be, t, x, r->norm1_w, r->norm1_b, 1, r->cin, HW, groups, GN_EPS, 1);
    ldm_op_conv2d(be, out, t, r->conv1_w, r->conv1_b, 1, r->cin, H, W, r->cout, 3, 1, 1);
    ldm_op_group_norm(be, t, out, r->norm2_w, r->norm2_b, 1, r->cout, HW, groups, GN_EPS, 1);
    ldm_op_conv2d(be, out, t, r->conv2_w, r->conv2_b, 1, r->cout, H, W, r->cout, 3, 1, 1);
    if (r->sc_w) {
        ldm_op_conv2d(be, t, x, r->sc_w, r->sc_b, 1, r->cin, H, W, r->cout, 1, 1, 0);
        ldm_op_add(be, out, out, t, (size_t)r->cout * HW);
    } else {
        ldm_op_add(be, out, out, x, (size_t)r->cout * HW);
    }
}

/* out[1, C, HW] = x + to_out(attention(group_norm(x))), one head of C channels. */
static void attn_forward(ldm_backend *be, ldm_arena *a, const vae_attn *t, float *out,
                         const float *x, float *tmp, int C, int HW, int groups) {
    const size_t n = (size_t)C * HW, mark = ldm_arena_mark(a);
    float *hs = ldm_arena_alloc(a, n); /* [HW, C] */
    float *q = ldm_arena_alloc(a, n);  /* [HW, C] */
    float *k = ldm_arena_alloc(a, n);
    float *v = ldm_arena_alloc(a, n);
    ldm_op_group_norm(be, tmp, x, t->gn_w, t->gn_b, 1, C, HW, groups, GN_EPS, 0);  /* [C, HW] */
    ldm_op_nchw_to_nhwc(be, hs, tmp, 1, C, HW);                                      /* [HW, C] */
    ldm_op_linear(be, q, hs, t->q_w, t->q_b, HW, C, C);
    ldm_op_linear(be, k, hs, t->k_w, t->k_b, HW, C, C);
    ldm_op_linear(be, v, hs, t->v_w, t->v_b, HW, C, C);
    ldm_op_attention(be, hs, q, k, v, 1, 1, HW, HW, C, C, C, 1.0f / sqrtf((float)C), 0);
    ldm_op_linear(be, q, hs, t->o_w, t->o_b, HW, C, C);                              /* [HW, C] */
    ldm_op_nhwc_to_nchw(be, tmp, q, 1, C, HW);                                       /* [C, HW] */
    ldm_op_add(be, out, x, tmp, n);  /* residual; rescale_output_factor is 1 */
    ldm_arena_reset(a, mark);
}

/* Decode one latent z[latent, h, w] (backend memory) into img[out, h*f, w*f] (host). */
static void decode_one(const ldm_vae *m, ldm_backend *be, ldm_arena *a, const float *z,
                       int h, int w, float *img) {
    const size_t big = max_activation(m, h, w);
    const size_t mark = ldm_arena_mark(a);
    float *cur = ldm_arena_alloc(a, big), *nxt = ldm_arena_alloc(a, big);
    float *tmp = ldm_arena_alloc(a, big), *sw;
#define SWAP() (sw = cur, cur = nxt, nxt = sw)
    int H = h, W = w, C = m->block_out[m->n_blocks - 1];
    const int G = m->groups;
    if (m->use_pq) {
        ldm_op_conv2d(be, tmp, z, m->pq_w, m->pq_b, 1, m->latent, H, W, m->latent, 1, 1, 0);
        z = tmp;                                                      /* [Z, h, w] */
    }
    ldm_op_conv2d(be, cur, z, m->in_w, m->in_b, 1, m->latent, H, W, C, 3, 1, 1); /* [C, h, w] */

    resnet_forward(be, &m->mid_res[0], nxt, cur, tmp, G, H, W);
    SWAP();
    if (m->has_attn) {
        attn_forward(be, a, &m->mid_attn, nxt, cur, tmp, C, H * W, G);
        SWAP();
    }
    resnet_forward(be, &m->mid_res[1], nxt, cur, tmp, G, H, W);
    SWAP();                                                           /* [C, h, w] */

    for (int i = 0; i < m->n_blocks; i++) {
        const vae_up *u = &m->up[i];
        for (int r = 0; r < u->n_res; r++) {
            resnet_forward(be, &u->res[r], nxt, cur, tmp, G, H, W);
            SWAP();
        }
        C = u->res[u->n_res - 1].cout;
        if (u->up_w) {
            ldm_op_upsample_nearest2x(be, tmp, cur, 1, C, H, W);             /* [C, 2H, 2W] */
            H *= 2, W *= 2;
            ldm_op_conv2d(be, cur, tmp, u->up_w, u->up_b, 1, C, H, W, C, 3, 1, 1);
        }
    }
    ldm_op_group_norm(be, tmp, cur, m->norm_out_w, m->norm_out_b, 1, C, H * W, G, GN_EPS, 1);
    ldm_op_conv2d(be, nxt, tmp, m->out_w, m->out_b, 1, C, H, W, m->out_ch, 3, 1, 1);
    if (img) ldm_be_download(be, img, nxt, (size_t)m->out_ch * H * W);      /* [out, H, W] */
#undef SWAP
    ldm_arena_reset(a, mark);
}

/* The whole decode on backend be; z and img (host) may be NULL on the dry backend. */
static void vae_forward(const ldm_vae *m, ldm_backend *be, ldm_arena *a, const float *z,
                        int B, int h, int w, float *img) {
    const size_t zn = (size_t)m->latent * h * w;
    const size_t in = (size_t)m->out_ch * h * w << (2 * (m->n_blocks - 1));
    const size_t mark = ldm_arena_mark(a);
    float *zb = ldm_arena_alloc(a, zn);
    for (int b = 0; b < B; b++) {
        if (z) ldm_be_upload(be, zb, z + b * zn, zn);
        decode_one(m, be, a, zb, h, w, img ? img + b * in : NULL);
    }
    ldm_arena_reset(a, mark);
}

size_t ldm_vae_arena_bytes(const ldm_vae *m, int B, int h, int w) {
    ldm_arena a;
    ldm_arena_measure(&a);
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    vae_forward(m, dry, &a, NULL, B, h, w, NULL);
    ldm_backend_free(dry);
    return a.peak;
}

int ldm_vae_decode(ldm_vae *m, ldm_arena *a, const float *z, int B, int h, int w, float *img) {
    if (B <= 0 || h <= 0 || w <= 0)
        return ldm_error("vae decode: invalid latent shape [%d, %d, %d, %d]", B, m->latent, h, w);
    vae_forward(m, m->be, a, z, B, h, w, img);
    return ldm_backend_status(m->be);
}

/* ---- encoder ---- */

int ldm_vae_has_encoder(const ldm_vae *m) { return m->enc.present; }

/* Largest activation (floats) of the encoder for an H x W image. */
static size_t enc_max_activation(const ldm_vae *m, int H, int W) {
    size_t best = (size_t)3 * H * W;
    int h = H, w = W;
    for (int i = 0; i < m->n_blocks; i++) {
        size_t c = (size_t)m->block_out[i];
        if (c * h * w > best) best = c * h * w;
        if (i < m->n_blocks - 1) {
            /* the padded input of the downsampler */
            if (c * (h + 1) * (w + 1) > best) best = c * (h + 1) * (w + 1);
            h /= 2, w /= 2;
        }
    }
    if ((size_t)2 * m->latent * h * w > best) best = (size_t)2 * m->latent * h * w;
    return best;
}

/* img [3, H, W] (backend memory) -> moments [2 * latent, h, w] (host). */
static void encode_one(const ldm_vae *m, ldm_backend *be, ldm_arena *a, const float *img, int H,
                       int W, float *moments) {
    const vae_encoder *e = &m->enc;
    const size_t big = enc_max_activation(m, H, W), mark = ldm_arena_mark(a);
    float *cur = ldm_arena_alloc(a, big), *nxt = ldm_arena_alloc(a, big);
    float *tmp = ldm_arena_alloc(a, big), *sw;
#define SWAP() (sw = cur, cur = nxt, nxt = sw)
    const int G = m->groups, Z2 = 2 * m->latent;
    int C = m->block_out[0];
    ldm_op_conv2d(be, cur, img, e->in_w, e->in_b, 1, 3, H, W, C, 3, 1, 1);   /* [C0, H, W] */
    for (int i = 0; i < m->n_blocks; i++) {
        const vae_down *d = &e->down[i];
        for (int r = 0; r < d->n_res; r++) {
            resnet_forward(be, &d->res[r], nxt, cur, tmp, G, H, W);
            SWAP();
        }
        C = m->block_out[i];
        if (d->down_w) {   /* F.pad(x, (0, 1, 0, 1)) then 3x3 stride 2: [C, H/2, W/2] */
            ldm_op_pad2d(be, tmp, cur, 1, C, H, W, 0, 1, 0, 1);
            ldm_op_conv2d(be, cur, tmp, d->down_w, d->down_b, 1, C, H + 1, W + 1, C, 3, 2, 0);
            H = (H + 1 - 3) / 2 + 1;
            W = (W + 1 - 3) / 2 + 1;
        }
    }
    resnet_forward(be, &e->mid_res[0], nxt, cur, tmp, G, H, W);
    SWAP();
    if (m->has_attn) {
        attn_forward(be, a, &e->mid_attn, nxt, cur, tmp, C, H * W, G);
        SWAP();
    }
    resnet_forward(be, &e->mid_res[1], nxt, cur, tmp, G, H, W);
    SWAP();
    ldm_op_group_norm(be, tmp, cur, e->norm_out_w, e->norm_out_b, 1, C, H * W, G, GN_EPS, 1);
    ldm_op_conv2d(be, nxt, tmp, e->out_w, e->out_b, 1, C, H, W, Z2, 3, 1, 1);   /* [2Z, h, w] */
    if (e->qc_w) {
        ldm_op_conv2d(be, cur, nxt, e->qc_w, e->qc_b, 1, Z2, H, W, Z2, 1, 1, 0);
        SWAP();
    }
    if (moments) ldm_be_download(be, moments, nxt, (size_t)Z2 * H * W);
#undef SWAP
    ldm_arena_reset(a, mark);
}

static void enc_forward(const ldm_vae *m, ldm_backend *be, ldm_arena *a, const float *img, int H,
                        int W, float *moments) {
    const size_t mark = ldm_arena_mark(a);
    float *x = ldm_arena_alloc(a, (size_t)3 * H * W);
    if (img) ldm_be_upload(be, x, img, (size_t)3 * H * W);
    encode_one(m, be, a, x, H, W, moments);
    ldm_arena_reset(a, mark);
}

size_t ldm_vae_encode_arena_bytes(const ldm_vae *m, int H, int W) {
    if (!m->enc.present) return 0;
    ldm_arena a;
    ldm_arena_measure(&a);
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    enc_forward(m, dry, &a, NULL, H, W, NULL);
    ldm_backend_free(dry);
    return a.peak;
}

int ldm_vae_encode(ldm_vae *m, ldm_arena *a, const float *img, int H, int W, float *moments) {
    if (!m->enc.present)
        return ldm_error_kind(LDM_DATA, "this bundle has no VAE encoder (vae.encoder.* weights): "
                              "image to image needs one; pack the model with its full VAE");
    const int f = ldm_vae_downscale(m);
    if (H <= 0 || W <= 0 || H % f || W % f)
        return ldm_error("vae encode: image %dx%d is not a multiple of %d", W, H, f);
    enc_forward(m, m->be, a, img, H, W, moments);
    return ldm_backend_status(m->be);
}
