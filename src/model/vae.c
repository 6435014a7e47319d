/* vae.c - the decoder half of diffusers' AutoencoderKL on the ops interface.
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

struct ldm_vae {
    const ldm_backend *be;
    int latent, out_ch, n_blocks, layers, groups, has_attn, use_pq;
    int block_out[MAX_BLOCKS];
    float scaling;
    ldm_tensor *pq_w, *pq_b; /* NULL when use_post_quant_conv is false */
    ldm_tensor *in_w, *in_b;
    vae_resnet mid_res[2];
    vae_attn mid_attn;
    vae_up up[MAX_BLOCKS];
    ldm_tensor *norm_out_w, *norm_out_b, *out_w, *out_b;
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

/* The model from a parsed config: weights from b, or weightless when b is NULL. */
static ldm_vae *vae_build(json_t *j, const ldm_bundle *b, const ldm_backend *be) {
    ldm_vae *m = ldm_xcalloc(1, sizeof *m);
    m->be = be;
    int rc = parse_config(m, j);
    json_decref(j);
    if (rc) { free(m); return NULL; }
    ldm_loader L = {b, be, 0};
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
    if (L.failed) { ldm_vae_free(m); return NULL; }
    return m;
}

ldm_vae *ldm_vae_load(const ldm_bundle *b, const ldm_backend *be) {
    json_t *j = cfg_load(b, MEMBER);
    return j ? vae_build(j, b, be) : NULL;
}

ldm_vae *ldm_vae_from_config(const char *config_json) {
    json_t *j = cfg_parse(config_json, MEMBER);
    return j ? vae_build(j, NULL, &ldm_backend_dry) : NULL;
}

void ldm_vae_free(ldm_vae *m) {
    if (!m) return;
    for (int i = 0; i < MAX_BLOCKS; i++) free(m->up[i].res);
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
static void resnet_forward(const ldm_backend *be, const vae_resnet *r, float *out,
                           const float *x, float *t, int groups, int H, int W) {
    const int HW = H * W;
    be->group_norm(t, x, r->norm1_w, r->norm1_b, 1, r->cin, HW, groups, GN_EPS, 1);
    be->conv2d(out, t, r->conv1_w, r->conv1_b, 1, r->cin, H, W, r->cout, 3, 1, 1);
    be->group_norm(t, out, r->norm2_w, r->norm2_b, 1, r->cout, HW, groups, GN_EPS, 1);
    be->conv2d(out, t, r->conv2_w, r->conv2_b, 1, r->cout, H, W, r->cout, 3, 1, 1);
    if (r->sc_w) {
        be->conv2d(t, x, r->sc_w, r->sc_b, 1, r->cin, H, W, r->cout, 1, 1, 0);
        be->add(out, out, t, (size_t)r->cout * HW);
    } else {
        be->add(out, out, x, (size_t)r->cout * HW);
    }
}

/* out[1, C, HW] = x + to_out(attention(group_norm(x))), one head of C channels. */
static void attn_forward(const ldm_backend *be, ldm_arena *a, const vae_attn *t, float *out,
                         const float *x, float *tmp, int C, int HW, int groups) {
    const size_t n = (size_t)C * HW, mark = ldm_arena_mark(a);
    float *hs = ldm_arena_alloc(a, n); /* [HW, C] */
    float *q = ldm_arena_alloc(a, n);  /* [HW, C] */
    float *k = ldm_arena_alloc(a, n);
    float *v = ldm_arena_alloc(a, n);
    be->group_norm(tmp, x, t->gn_w, t->gn_b, 1, C, HW, groups, GN_EPS, 0);  /* [C, HW] */
    be->nchw_to_nhwc(hs, tmp, 1, C, HW);                                      /* [HW, C] */
    be->linear(q, hs, t->q_w, t->q_b, HW, C, C);
    be->linear(k, hs, t->k_w, t->k_b, HW, C, C);
    be->linear(v, hs, t->v_w, t->v_b, HW, C, C);
    be->attention(hs, q, k, v, 1, 1, HW, HW, C, C, C, 1.0f / sqrtf((float)C), 0);
    be->linear(q, hs, t->o_w, t->o_b, HW, C, C);                              /* [HW, C] */
    be->nhwc_to_nchw(tmp, q, 1, C, HW);                                       /* [C, HW] */
    be->add(out, x, tmp, n);  /* residual; rescale_output_factor is 1 */
    ldm_arena_reset(a, mark);
}

/* Decode one latent z[latent, h, w] (backend memory) into img[out, h*f, w*f] (host). */
static void decode_one(const ldm_vae *m, const ldm_backend *be, ldm_arena *a, const float *z,
                       int h, int w, float *img) {
    const size_t big = max_activation(m, h, w);
    const size_t mark = ldm_arena_mark(a);
    float *cur = ldm_arena_alloc(a, big), *nxt = ldm_arena_alloc(a, big);
    float *tmp = ldm_arena_alloc(a, big), *sw;
#define SWAP() (sw = cur, cur = nxt, nxt = sw)
    int H = h, W = w, C = m->block_out[m->n_blocks - 1];
    const int G = m->groups;
    if (m->use_pq) {
        be->conv2d(tmp, z, m->pq_w, m->pq_b, 1, m->latent, H, W, m->latent, 1, 1, 0);
        z = tmp;                                                      /* [Z, h, w] */
    }
    be->conv2d(cur, z, m->in_w, m->in_b, 1, m->latent, H, W, C, 3, 1, 1); /* [C, h, w] */

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
            be->upsample_nearest2x(tmp, cur, 1, C, H, W);             /* [C, 2H, 2W] */
            H *= 2, W *= 2;
            be->conv2d(cur, tmp, u->up_w, u->up_b, 1, C, H, W, C, 3, 1, 1);
        }
    }
    be->group_norm(tmp, cur, m->norm_out_w, m->norm_out_b, 1, C, H * W, G, GN_EPS, 1);
    be->conv2d(nxt, tmp, m->out_w, m->out_b, 1, C, H, W, m->out_ch, 3, 1, 1);
    if (img) be->download(img, nxt, (size_t)m->out_ch * H * W);      /* [out, H, W] */
#undef SWAP
    ldm_arena_reset(a, mark);
}

/* The whole decode on backend be; z and img (host) may be NULL on the dry backend. */
static void vae_forward(const ldm_vae *m, const ldm_backend *be, ldm_arena *a, const float *z,
                        int B, int h, int w, float *img) {
    const size_t zn = (size_t)m->latent * h * w;
    const size_t in = (size_t)m->out_ch * h * w << (2 * (m->n_blocks - 1));
    const size_t mark = ldm_arena_mark(a);
    float *zb = ldm_arena_alloc(a, zn);
    for (int b = 0; b < B; b++) {
        if (z) be->upload(zb, z + b * zn, zn);
        decode_one(m, be, a, zb, h, w, img ? img + b * in : NULL);
    }
    ldm_arena_reset(a, mark);
}

size_t ldm_vae_arena_bytes(const ldm_vae *m, int B, int h, int w) {
    ldm_arena a;
    ldm_arena_measure(&a);
    vae_forward(m, &ldm_backend_dry, &a, NULL, B, h, w, NULL);
    return a.peak;
}

int ldm_vae_decode(ldm_vae *m, ldm_arena *a, const float *z, int B, int h, int w, float *img) {
    if (B <= 0 || h <= 0 || w <= 0)
        return ldm_error("vae decode: invalid latent shape [%d, %d, %d, %d]", B, m->latent, h, w);
    vae_forward(m, m->be, a, z, B, h, w, img);
    return 0;
}
