/* unet.c - diffusers UNet2DConditionModel (Stable Diffusion 1.x / 2.x family) on the op table.
 *
 * Load: unet/config.json is read and everything outside the supported set (the SD 1.x / 2.x
 * architecture: CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D /
 * CrossAttnUpBlock2D, positional time embedding, GEGLU transformers) is refused naming the
 * field and its value.  Then every weight is looked up by its diffusers state-dict name
 * ("unet." + key) with the shape the config implies, and handed to the backend.
 *
 * Forward (diffusers UNet2DConditionModel.forward without the optional extras):
 *   emb  = time_embedding(sinusoid(t))                       [B, temb]
 *   h    = conv_in(x)                                        [B, C0, H, W]
 *   down blocks: (resnet -> transformer?) x layers, downsample; every output is a skip
 *   mid  : resnet -> transformer -> resnet
 *   up blocks: (cat(h, skip) -> resnet -> transformer?) x (layers+1), upsample
 *   out  = conv_out(silu(conv_norm_out(h)))                  [B, Cout, H, W]
 * Any latent size: a downsampler gives ceil(H/2); when the size is not a multiple of
 * 2^(upsamplers), diffusers resizes each upsampler's output to its next skip's size.
 *
 * Memory: activations live in one stack arena.  Skips are pushed in the order the down path
 * makes them and the up path consumes them in reverse, which nests like the stack.  An up
 * resnet writes its output over the skip it consumed (dead once concatenated), and an
 * upsampler writes its output over its input (dead once upsampled); space for the larger
 * result is reserved before the temporaries are stacked above it.  Transformers update
 * their input in place.  The feed-forward runs over row chunks, so its 8x-wide hidden
 * tensor never exists whole.  Elementwise ops (add, silu) are called with out == input.
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/limits.h"
#include "model/config.h"
#include "model/model.h"

#define CFG_NAME "unet/config.json"
#define MAX_BLOCKS LDM_MAX_BLOCKS

/* ------------------------------------------------------------------------------------------
 * Model structure (names follow the diffusers modules) */

typedef struct { ldm_tensor *w, *b; } unet_linear; /* nn.Linear or nn.Conv2d; b may be NULL */
typedef struct { ldm_tensor *g, *b; } unet_norm;   /* GroupNorm / LayerNorm weight, bias */

typedef struct {            /* ResnetBlock2D */
    int cin, cout;
    unet_norm norm1, norm2;
    unet_linear conv1, conv2, time_emb_proj;
    unet_linear conv_shortcut; /* 1x1, only when cin != cout */
} unet_resnet;

typedef struct {            /* Attention (attn1 / attn2) */
    int cross;              /* keys/values from the context instead of the hidden states */
    ldm_tensor *to_q, *to_k, *to_v;
    unet_linear to_out;     /* to_out.0 */
} unet_attention;

typedef struct {            /* BasicTransformerBlock */
    unet_norm norm1, norm2, norm3;
    unet_attention attn1, attn2;
    unet_linear ff_proj;    /* ff.net.0.proj  [2F, D] (GEGLU) */
    unet_linear ff_out;     /* ff.net.2       [D, F] */
} unet_tblock;

typedef struct {            /* Transformer2DModel */
    int channels, inner, heads, head_dim, ff_inner, linear_proj, nblocks;
    unet_norm norm;
    unet_linear proj_in, proj_out;
    unet_tblock *blocks;
} unet_transformer;

typedef struct {            /* CrossAttnDownBlock2D / DownBlock2D / CrossAttnUpBlock2D / UpBlock2D */
    int nlayers, cout;
    unet_resnet *resnets;
    unet_transformer *attentions; /* NULL for DownBlock2D / UpBlock2D */
    int has_sampler;
    unet_linear sampler;    /* downsamplers.0.conv (stride 2) / upsamplers.0.conv */
} unet_block;

struct ldm_unet {
    ldm_backend *be;
    int owns_be;           /* ldm_unet_from_config: a dry handle of its own */
    void *weights;         /* the backend's copy of the weights, or NULL */
    /* config */
    int in_channels, out_channels, sample_size, ctx_dim, nblocks, groups, temb_dim;
    int flip_sin_to_cos, center_input;
    float freq_shift, eps;
    int ff_rows;            /* feed-forward row chunk; 0 = automatic */
    int block_out[MAX_BLOCKS];
    /* weights */
    unet_linear conv_in, time_linear_1, time_linear_2, conv_out;
    unet_norm conv_norm_out;
    unet_block down[MAX_BLOCKS], up[MAX_BLOCKS];
    unet_resnet mid_resnets[2];
    unet_transformer mid_attention;
};

/* ------------------------------------------------------------------------------------------
 * Config reading: each reader names the field and the value it refuses. */

typedef struct {            /* everything parsed from the config that shapes the weights */
    int n;
    int down_attn[MAX_BLOCKS], up_attn[MAX_BLOCKS];
    int layers[MAX_BLOCKS], heads[MAX_BLOCKS], tlayers[MAX_BLOCKS], only_cross[MAX_BLOCKS];
    int linear_proj;
} unet_arch;

/* Refuse a field's value: `unet/config.json: field "x" = <json> is not supported (expected ...)`. */
static int refuse(json_t *root, const char *field, const char *expected) {
    json_t *v = json_object_get(root, field);
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    ldm_error("%s: field \"%s\" = %s is not supported (expected %s)", CFG_NAME, field,
              s ? s : "null", expected);
    free(s);
    return -1;
}

/* A string field (def when missing or null) that must be one of allowed (NULL-terminated). */
static int str_in(json_t *root, const char *field, const char *def, const char *const *allowed,
                  const char *expected) {
    const char *s;
    if (cfg_str_or(root, CFG_NAME, field, def, &s)) return -1;
    for (int i = 0; s && allowed[i]; i++)
        if (!strcmp(s, allowed[i])) return 0;
    return refuse(root, field, expected);
}

/* A numeric field that must be missing, null or equal to want. */
static int num_is(json_t *root, const char *field, float want) {
    float x;
    if (cfg_float_or(root, CFG_NAME, field, want, &x)) return -1;
    if (x == want) return 0;
    char e[32];
    snprintf(e, sizeof e, "%g", (double)want);
    return refuse(root, field, e);
}

/* A boolean field that must be missing, null or false. */
static int is_false(json_t *root, const char *field) {
    int x;
    if (cfg_bool_or(root, CFG_NAME, field, 0, &x)) return -1;
    return x ? refuse(root, field, "false") : 0;
}

/* An integer field in [min, max] (def when missing or null); max from core/limits.h. */
static int int_range(json_t *root, const char *field, int def, int min, int max, int *out) {
    if (cfg_int_or(root, CFG_NAME, field, def, out)) return -1;
    if (*out >= min && *out <= max) return 0;
    char e[64];
    snprintf(e, sizeof e, "an integer in %d..%d", min, max);
    return refuse(root, field, e);
}

/* Per-block integers (an integer or one per block), each in 1..max. */
static int per_block(json_t *root, const char *field, int def, int n, int max, int *out) {
    if (cfg_int_or_list_or(root, CFG_NAME, field, n, def, out)) return -1;
    char e[64];
    snprintf(e, sizeof e, "positive integers up to %d", max);
    for (int i = 0; i < n; i++)
        if (out[i] < 1 || out[i] > max) return refuse(root, field, e);
    return 0;
}

/* down_block_types / up_block_types: n strings, each `cross` or `plain`. */
static int block_types(json_t *root, const char *field, const char *cross, const char *plain,
                       int *n, int *is_cross) {
    const char *t[MAX_BLOCKS];
    if (cfg_str_list(root, CFG_NAME, field, t, MAX_BLOCKS, n)) return -1;
    if (*n < 1) return refuse(root, field, "at least one block");
    for (int i = 0; i < *n; i++) {
        if (!strcmp(t[i], cross)) is_cross[i] = 1;
        else if (!strcmp(t[i], plain)) is_cross[i] = 0;
        else
            return ldm_error("%s: field \"%s\": block type \"%s\" is not supported (expected "
                             "\"%s\" or \"%s\")", CFG_NAME, field, t[i], cross, plain);
    }
    return 0;
}

static int parse_config(ldm_unet *m, unet_arch *A, json_t *root) {
    static const char *const silu[] = {"silu", "swish", NULL};
    static const char *const positional[] = {"positional", NULL};
    static const char *const deflt[] = {"default", NULL};
    static const char *const mid[] = {"UNetMidBlock2DCrossAttn", NULL};
    static const char *const cls[] = {"UNet2DConditionModel", NULL};
    int n_up = 0, n_boc = 0, flag;

    if (str_in(root, "_class_name", "UNet2DConditionModel", cls, "\"UNet2DConditionModel\"") ||
        block_types(root, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D", &A->n,
                    A->down_attn) ||
        block_types(root, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", &n_up, A->up_attn))
        return -1;
    if (n_up != A->n) return refuse(root, "up_block_types", "as many blocks as down_block_types");
    int n = m->nblocks = A->n;
    if (cfg_int_list(root, CFG_NAME, "block_out_channels", m->block_out, MAX_BLOCKS, &n_boc))
        return -1;
    if (n_boc != n) return refuse(root, "block_out_channels", "one entry per down block");
    for (int i = 0; i < n; i++)
        if (m->block_out[i] < 1 || m->block_out[i] > LDM_MAX_CHANNELS)
            return refuse(root, "block_out_channels", "positive integers up to 16384");

    if (str_in(root, "mid_block_type", "UNetMidBlock2DCrossAttn", mid,
               "\"UNetMidBlock2DCrossAttn\"") ||
        int_range(root, "in_channels", 4, 1, LDM_MAX_CHANNELS, &m->in_channels) ||
        int_range(root, "out_channels", 4, 1, LDM_MAX_CHANNELS, &m->out_channels) ||
        int_range(root, "sample_size", 0, 0, LDM_MAX_SAMPLE_SIZE, &m->sample_size) ||
        cfg_bool_or(root, CFG_NAME, "center_input_sample", 0, &m->center_input) ||
        cfg_bool_or(root, CFG_NAME, "flip_sin_to_cos", 1, &m->flip_sin_to_cos) ||
        cfg_float_or(root, CFG_NAME, "freq_shift", 0.0f, &m->freq_shift) ||
        per_block(root, "layers_per_block", 2, n, LDM_MAX_LAYERS, A->layers))
        return -1;

    /* heads: num_attention_heads or attention_head_dim (SD configs put the count there) */
    int dims[MAX_BLOCKS];
    if (per_block(root, "attention_head_dim", 8, n, LDM_MAX_CHANNELS, dims)) return -1;
    if (cfg_has(root, "num_attention_heads")) {
        if (per_block(root, "num_attention_heads", 8, n, LDM_MAX_CHANNELS, A->heads)) return -1;
    } else {
        memcpy(A->heads, dims, sizeof dims);
    }

    json_t *tl = json_object_get(root, "transformer_layers_per_block");
    if (tl && json_is_array(tl))
        for (size_t i = 0; i < json_array_size(tl); i++)
            if (json_is_array(json_array_get(tl, i)))
                return refuse(root, "transformer_layers_per_block",
                              "an integer or one integer per block");
    if (per_block(root, "transformer_layers_per_block", 1, n, LDM_MAX_LAYERS, A->tlayers)) return -1;
    if (cfg_has(root, "reverse_transformer_layers_per_block"))
        return refuse(root, "reverse_transformer_layers_per_block", "null");
    if (cfg_bool_or_list_or(root, CFG_NAME, "only_cross_attention", n, 0, A->only_cross) ||
        cfg_bool_or(root, CFG_NAME, "use_linear_projection", 0, &A->linear_proj) ||
        cfg_bool_or(root, CFG_NAME, "upcast_attention", 0, &flag)) /* float32 anyway */
        return -1;
    if (json_is_array(json_object_get(root, "cross_attention_dim")))
        return refuse(root, "cross_attention_dim", "one integer for all blocks");
    if (int_range(root, "cross_attention_dim", 1280, 1, LDM_MAX_CHANNELS, &m->ctx_dim)) return -1;

    if (json_object_get(root, "norm_num_groups") && !cfg_has(root, "norm_num_groups"))
        return refuse(root, "norm_num_groups", "an integer");
    if (int_range(root, "norm_num_groups", 32, 1, LDM_MAX_CHANNELS, &m->groups) ||
        cfg_float_or(root, CFG_NAME, "norm_eps", 1e-5f, &m->eps))
        return -1;
    for (int i = 0; i < n; i++)
        if (m->block_out[i] % m->groups)
            return refuse(root, "norm_num_groups", "a divisor of every block_out_channels");

    m->temb_dim = 4 * m->block_out[0];   /* <= 4 * LDM_MAX_CHANNELS = LDM_MAX_WIDTH */
    if (int_range(root, "time_embedding_dim", m->temb_dim, 1, LDM_MAX_WIDTH, &m->temb_dim)) return -1;

    /* the fixed parts of the SD architecture */
    if (str_in(root, "act_fn", "silu", silu, "\"silu\"") ||
        str_in(root, "time_embedding_type", "positional", positional, "\"positional\"") ||
        str_in(root, "resnet_time_scale_shift", "default", deflt, "\"default\"") ||
        str_in(root, "attention_type", "default", deflt, "\"default\"") ||
        is_false(root, "dual_cross_attention") || is_false(root, "resnet_skip_time_act") ||
        is_false(root, "class_embeddings_concat") ||
        num_is(root, "conv_in_kernel", 3) || num_is(root, "conv_out_kernel", 3) ||
        num_is(root, "downsample_padding", 1) || num_is(root, "mid_block_scale_factor", 1) ||
        num_is(root, "resnet_out_scale_factor", 1))
        return -1;
    static const char *const null_fields[] = {
        "class_embed_type", "num_class_embeds", "addition_embed_type", "encoder_hid_dim",
        "encoder_hid_dim_type", "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act",
        "cross_attention_norm", NULL};
    for (int i = 0; null_fields[i]; i++)
        if (cfg_has(root, null_fields[i])) return refuse(root, null_fields[i], "null");
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Weight loading (config.h's ldm_loader: the first failure is kept, naming the tensor). */

/* prefix.weight [out, in] (+ prefix.bias [out]) */
static unet_linear load_linear(ldm_loader *L, const char *prefix, int out, int in, int bias) {
    unet_linear l = {0};
    if (!L->b && !L->want) return l; /* weightless model (ldm_unet_from_config) */
    l.w = ldm_load_weight(L, LDM_MAT(out, in), "unet.%s.weight", prefix);
    if (bias) l.b = ldm_load_weight(L, LDM_VEC(out), "unet.%s.bias", prefix);
    return l;
}

/* prefix.weight [out, in, k, k], prefix.bias [out] */
static unet_linear load_conv(ldm_loader *L, const char *prefix, int out, int in, int k) {
    unet_linear l = {0};
    if (!L->b && !L->want) return l; /* weightless model (ldm_unet_from_config) */
    l.w = ldm_load_weight(L, LDM_CONV(out, in, k), "unet.%s.weight", prefix);
    l.b = ldm_load_weight(L, LDM_VEC(out), "unet.%s.bias", prefix);
    return l;
}

static unet_norm load_norm(ldm_loader *L, const char *prefix, int c) {
    unet_norm n = {0};
    if (!L->b && !L->want) return n; /* weightless model (ldm_unet_from_config) */
    n.g = ldm_load_weight(L, LDM_VEC(c), "unet.%s.weight", prefix);
    n.b = ldm_load_weight(L, LDM_VEC(c), "unet.%s.bias", prefix);
    return n;
}

static void load_resnet(ldm_loader *L, const ldm_unet *m, unet_resnet *r, const char *p, int cin,
                        int cout) {
    char s[200];
    r->cin = cin;
    r->cout = cout;
    if (!L->failed && (cin % m->groups || cout % m->groups)) {
        ldm_error("%s: %s: norm_num_groups %d does not divide its %d/%d channels", CFG_NAME, p,
                  m->groups, cin, cout);
        L->failed = 1;
    }
    snprintf(s, sizeof s, "%s.norm1", p);         r->norm1 = load_norm(L, s, cin);
    snprintf(s, sizeof s, "%s.conv1", p);         r->conv1 = load_conv(L, s, cout, cin, 3);
    snprintf(s, sizeof s, "%s.time_emb_proj", p); r->time_emb_proj = load_linear(L, s, cout, m->temb_dim, 1);
    snprintf(s, sizeof s, "%s.norm2", p);         r->norm2 = load_norm(L, s, cout);
    snprintf(s, sizeof s, "%s.conv2", p);         r->conv2 = load_conv(L, s, cout, cout, 3);
    if (cin != cout) {
        snprintf(s, sizeof s, "%s.conv_shortcut", p);
        r->conv_shortcut = load_conv(L, s, cout, cin, 1);
    }
}

static void load_attention(ldm_loader *L, unet_attention *a, const char *p, int D, int kv_dim, int cross) {
    char s[200];
    a->cross = cross;
    snprintf(s, sizeof s, "%s.to_q", p);   a->to_q = load_linear(L, s, D, D, 0).w;
    snprintf(s, sizeof s, "%s.to_k", p);   a->to_k = load_linear(L, s, D, kv_dim, 0).w;
    snprintf(s, sizeof s, "%s.to_v", p);   a->to_v = load_linear(L, s, D, kv_dim, 0).w;
    snprintf(s, sizeof s, "%s.to_out.0", p); a->to_out = load_linear(L, s, D, D, 1);
}

/* Transformer2DModel over C channels with `heads` heads of C/heads (diffusers' integer division). */
static void load_transformer(ldm_loader *L, const ldm_unet *m, unet_transformer *t, const char *p,
                             int C, int heads, int nblocks, int only_cross, int linear_proj) {
    char s[200];
    if (!L->failed && heads > C) {
        ldm_error("%s: %s: %d attention heads for %d channels", CFG_NAME, p, heads, C);
        L->failed = 1;
    }
    if (L->failed) return;
    t->channels = C;
    t->heads = heads;
    t->head_dim = C / heads;
    t->inner = heads * t->head_dim;
    t->ff_inner = 4 * t->inner;
    t->linear_proj = linear_proj;
    t->nblocks = nblocks;
    t->blocks = ldm_xcalloc(nblocks, sizeof *t->blocks);
    int D = t->inner;
    snprintf(s, sizeof s, "%s.norm", p);
    t->norm = load_norm(L, s, C);
    snprintf(s, sizeof s, "%s.proj_in", p);
    t->proj_in = linear_proj ? load_linear(L, s, D, C, 1) : load_conv(L, s, D, C, 1);
    for (int i = 0; i < nblocks; i++) {
        unet_tblock *b = &t->blocks[i];
        char q[160];
        snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, i);
        snprintf(s, sizeof s, "%s.norm1", q); b->norm1 = load_norm(L, s, D);
        snprintf(s, sizeof s, "%s.attn1", q);
        load_attention(L, &b->attn1, s, D, only_cross ? m->ctx_dim : D, only_cross);
        snprintf(s, sizeof s, "%s.norm2", q); b->norm2 = load_norm(L, s, D);
        snprintf(s, sizeof s, "%s.attn2", q);
        load_attention(L, &b->attn2, s, D, m->ctx_dim, 1);
        snprintf(s, sizeof s, "%s.norm3", q); b->norm3 = load_norm(L, s, D);
        snprintf(s, sizeof s, "%s.ff.net.0.proj", q);
        b->ff_proj = load_linear(L, s, 2 * t->ff_inner, D, 1);
        snprintf(s, sizeof s, "%s.ff.net.2", q);
        b->ff_out = load_linear(L, s, D, t->ff_inner, 1);
    }
    snprintf(s, sizeof s, "%s.proj_out", p);
    t->proj_out = linear_proj ? load_linear(L, s, C, D, 1) : load_conv(L, s, C, D, 1);
}

static void free_transformer(unet_transformer *t) {
    if (t) free(t->blocks);
}

static void free_block(unet_block *b) {
    if (b->attentions)
        for (int i = 0; i < b->nlayers; i++) free_transformer(&b->attentions[i]);
    free(b->attentions);
    free(b->resnets);
}

void ldm_unet_free(ldm_unet *m) {
    if (!m) return;
    for (int i = 0; i < m->nblocks; i++) {
        free_block(&m->down[i]);
        free_block(&m->up[i]);
    }
    free_transformer(&m->mid_attention);
    ldm_be_release_weights(m->be, m->weights);
    if (m->owns_be) ldm_backend_free(m->be);
    free(m);
}

static int load_weights(ldm_unet *m, const unet_arch *A, ldm_loader *L) {
    int n = m->nblocks, c0 = m->block_out[0];
    char p[200];
    m->conv_in = load_conv(L, "conv_in", c0, m->in_channels, 3);
    m->time_linear_1 = load_linear(L, "time_embedding.linear_1", m->temb_dim, c0, 1);
    m->time_linear_2 = load_linear(L, "time_embedding.linear_2", m->temb_dim, m->temb_dim, 1);

    /* down path; skip[] tracks the channels of each skip connection, to check the up path */
    int skip[4 * MAX_BLOCKS * 8], nskip = 0, nskip_max = (int)(sizeof skip / sizeof skip[0]);
    skip[nskip++] = c0;
    int cin = c0;
    for (int i = 0; i < n; i++) {
        unet_block *b = &m->down[i];
        int cout = m->block_out[i];
        b->nlayers = A->layers[i];
        b->cout = cout;
        b->resnets = ldm_xcalloc(b->nlayers, sizeof *b->resnets);
        if (A->down_attn[i]) b->attentions = ldm_xcalloc(b->nlayers, sizeof *b->attentions);
        for (int j = 0; j < b->nlayers; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            load_resnet(L, m, &b->resnets[j], p, j ? cout : cin, cout);
            if (b->attentions) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
                load_transformer(L, m, &b->attentions[j], p, cout, A->heads[i], A->tlayers[i],
                                 A->only_cross[i], A->linear_proj);
            }
            if (nskip < nskip_max) skip[nskip++] = cout;
        }
        if (i < n - 1) {
            b->has_sampler = 1;
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
            b->sampler = load_conv(L, p, cout, cout, 3);
            if (nskip < nskip_max) skip[nskip++] = cout;
        }
        cin = cout;
    }
    if (nskip >= nskip_max)
        return ldm_error("%s: field \"layers_per_block\": too many layers in all (more than %d "
                         "skip connections)", CFG_NAME, nskip_max - 1);

    /* mid block: heads, transformer layers and channels of the last down block */
    int cm = m->block_out[n - 1];
    load_resnet(L, m, &m->mid_resnets[0], "mid_block.resnets.0", cm, cm);
    load_transformer(L, m, &m->mid_attention, "mid_block.attentions.0", cm, A->heads[n - 1],
                     A->tlayers[n - 1], 0, A->linear_proj);
    load_resnet(L, m, &m->mid_resnets[1], "mid_block.resnets.1", cm, cm);

    /* up path: block i mirrors down block n-1-i and has one more layer */
    int ch = cm;
    for (int i = 0; i < n; i++) {
        unet_block *b = &m->up[i];
        int r = n - 1 - i, cout = m->block_out[r];
        b->nlayers = A->layers[r] + 1;
        b->cout = cout;
        b->resnets = ldm_xcalloc(b->nlayers, sizeof *b->resnets);
        if (A->up_attn[i]) b->attentions = ldm_xcalloc(b->nlayers, sizeof *b->attentions);
        for (int j = 0; j < b->nlayers; j++) {
            if (nskip == 0) return ldm_error("%s: up blocks consume more skips than down blocks make", CFG_NAME);
            int cs = skip[--nskip];
            /* diffusers sizes this resnet as (prev or out) + (in on the last layer, else out);
             * the skip it will receive must have that many channels */
            int in_ch = m->block_out[r > 0 ? r - 1 : 0];
            int want = (j == b->nlayers - 1) ? in_ch : cout;
            if (cs != want)
                return ldm_error("%s: up_blocks.%d.resnets.%d would concatenate a %d-channel skip "
                                 "where diffusers expects %d (block_out_channels/layers_per_block "
                                 "combination not supported)",
                                 CFG_NAME, i, j, cs, want);
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            load_resnet(L, m, &b->resnets[j], p, ch + cs, cout);
            if (b->attentions) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
                load_transformer(L, m, &b->attentions[j], p, cout, A->heads[r], A->tlayers[r],
                                 A->only_cross[r], A->linear_proj);
            }
            ch = cout;
        }
        if (i < n - 1) {
            b->has_sampler = 1;
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
            b->sampler = load_conv(L, p, cout, cout, 3);
        }
    }
    m->conv_norm_out = load_norm(L, "conv_norm_out", c0);
    m->conv_out = load_conv(L, "conv_out", m->out_channels, c0, 3);
    return L->failed ? -1 : 0;
}

ldm_unet *ldm_unet_load(const ldm_bundle *b, ldm_backend *be) {
    json_t *root = cfg_load(b, CFG_NAME);
    if (!root) return NULL;
    ldm_unet *m = ldm_xcalloc(1, sizeof *m);
    m->be = be;
    unet_arch A;
    memset(&A, 0, sizeof A);
    int rc = parse_config(m, &A, root);
    json_decref(root);
    if (rc) {
        free(m);
        return NULL;
    }
    ldm_loader L = {.b = b, .be = be};
    int bad = load_weights(m, &A, &L);
    if (ldm_loader_finish(&L, &m->weights) || bad) {
        ldm_unet_free(m);
        return NULL;
    }
    return m;
}

static ldm_unet *unet_from_config(const char *config_json, ldm_weight_list_fn want, void *user) {
    json_t *root = cfg_parse(config_json, CFG_NAME);
    if (!root) return NULL;
    ldm_unet *m = ldm_xcalloc(1, sizeof *m);
    m->be = ldm_backend_new("dry", NULL);
    m->owns_be = 1;
    unet_arch A;
    memset(&A, 0, sizeof A);
    int rc = parse_config(m, &A, root);
    json_decref(root);
    ldm_loader L = {NULL, m->be, 0, NULL, 0, 0, want, user};
    if (!rc) rc = load_weights(m, &A, &L);
    if (ldm_loader_finish(&L, &m->weights) || rc) {
        ldm_unet_free(m);
        return NULL;
    }
    return m;
}

ldm_unet *ldm_unet_from_config(const char *config_json) {
    return unet_from_config(config_json, NULL, NULL);
}

int ldm_unet_list_weights(const char *config_json, ldm_weight_list_fn fn, void *user) {
    ldm_unet *m = unet_from_config(config_json, fn, user);
    ldm_unet_free(m);
    return m ? 0 : -1;
}

void ldm_unet_set_ff_chunk(ldm_unet *m, int rows) { m->ff_rows = rows > 0 ? rows : 0; }

int ldm_unet_in_channels(const ldm_unet *m) { return m->in_channels; }
int ldm_unet_out_channels(const ldm_unet *m) { return m->out_channels; }
int ldm_unet_sample_size(const ldm_unet *m) { return m->sample_size; }
int ldm_unet_context_dim(const ldm_unet *m) { return m->ctx_dim; }

/* ------------------------------------------------------------------------------------------
 * Forward pass */

typedef struct {
    const ldm_unet *m;
    ldm_backend *be;
    ldm_arena *a;
    int B, T;
    const float *ctx;      /* [B, T, ctx_dim] */
    const float *temb_act; /* silu(emb) [B, temb_dim]: every resnet applies SiLU first */
} fwd;

/* Backend pointers are never dereferenced, but offsetting one is fine; a measuring arena may
 * hand out NULL, which must not be offset. */
static float *at(float *p, size_t off) { return p ? p + off : p; }

/* Make sure the region [mark, mark + n floats) can be written while what is stacked above
 * stays intact: later allocations start beyond it.  Afterwards reset(mark) + alloc(n) gives
 * back the pointer that alloc returned at that mark. */
static void reserve_from(ldm_arena *a, size_t mark, size_t n) {
    size_t need = mark + n * sizeof(float) + 64; /* 64: alignment slack of the allocation */
    if (a->used < need) ldm_arena_alloc(a, (need - a->used + sizeof(float) - 1) / sizeof(float));
}

/* Re-claim n floats at mark (see reserve_from); returns p, the pointer alloc gave there. */
static float *reclaim(ldm_arena *a, size_t mark, size_t n, float *p) {
    ldm_arena_reset(a, mark);
    float *q = ldm_arena_alloc(a, n);
    if (q != p) {
        ldm_log(0, "ldm: unet: arena returned a different pointer at the same mark (a bug)\n");
        abort();
    }
    return q;
}

/* ResnetBlock2D: out[B, cout, H, W] = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))
 * + time_emb_proj(silu(emb))))).  out must not overlap x or anything stacked above. */
static void resnet_forward(const fwd *f, const unet_resnet *r, float *out, const float *x, int H,
                           int W) {
    ldm_backend *be = f->be;
    ldm_arena *a = f->a;
    const ldm_unet *m = f->m;
    int B = f->B, HW = H * W;
    size_t mark = ldm_arena_mark(a);
    float *t1 = ldm_arena_alloc(a, (size_t)B * r->cin * HW);            /* [B, cin, H, W]  */
    ldm_op_group_norm(be, t1, x, r->norm1.g, r->norm1.b, B, r->cin, HW, m->groups, m->eps, 1);
    float *h = ldm_arena_alloc(a, (size_t)B * r->cout * HW);            /* [B, cout, H, W] */
    ldm_op_conv2d(be, h, t1, r->conv1.w, r->conv1.b, B, r->cin, H, W, r->cout, 3, 1, 1);
    float *tp = ldm_arena_alloc(a, (size_t)B * r->cout);                /* [B, cout]       */
    ldm_op_linear(be, tp, f->temb_act, r->time_emb_proj.w, r->time_emb_proj.b, B, m->temb_dim, r->cout);
    ldm_op_add_channel_bias(be, h, tp, B, r->cout, HW);
    float *t2 = r->cin >= r->cout ? t1 : ldm_arena_alloc(a, (size_t)B * r->cout * HW);
    ldm_op_group_norm(be, t2, h, r->norm2.g, r->norm2.b, B, r->cout, HW, m->groups, m->eps, 1);
    ldm_op_conv2d(be, out, t2, r->conv2.w, r->conv2.b, B, r->cout, H, W, r->cout, 3, 1, 1);
    size_t n = (size_t)B * r->cout * HW;
    if (r->conv_shortcut.w) {
        ldm_op_conv2d(be, h, x, r->conv_shortcut.w, r->conv_shortcut.b, B, r->cin, H, W, r->cout, 1, 1, 0);
        ldm_op_add(be, out, h, out, n);                                        /* input + hidden  */
    } else {
        ldm_op_add(be, out, x, out, n);
    }
    ldm_arena_reset(a, mark);
}

/* hs[B, S, D] += to_out(attention(q, k, v)) with q from layer_norm(hs) and k, v from the same
 * (self-attention) or from the context (cross-attention). */
static void attention_residual(const fwd *f, const unet_transformer *tr, const unet_norm *norm,
                               const unet_attention *at_, float *hs, int S) {
    ldm_backend *be = f->be;
    ldm_arena *a = f->a;
    int B = f->B, D = tr->inner, M = B * S;
    int Skv = at_->cross ? f->T : S, kv_dim = at_->cross ? f->m->ctx_dim : D;
    size_t mark = ldm_arena_mark(a);
    float *q = ldm_arena_alloc(a, (size_t)M * D);                       /* [B, S, D]   */
    float *k = ldm_arena_alloc(a, (size_t)B * Skv * D);                 /* [B, Skv, D] */
    float *v = ldm_arena_alloc(a, (size_t)B * Skv * D);                 /* [B, Skv, D] */
    float *n = ldm_arena_alloc(a, (size_t)M * D);                       /* [B, S, D]   */
    ldm_op_layer_norm(be, n, hs, norm->g, norm->b, M, D, 1e-5f);
    ldm_op_linear(be, q, n, at_->to_q, NULL, M, D, D);
    const float *kv = at_->cross ? f->ctx : n;                          /* [B, Skv, kv_dim] */
    ldm_op_linear(be, k, kv, at_->to_k, NULL, B * Skv, kv_dim, D);
    ldm_op_linear(be, v, kv, at_->to_v, NULL, B * Skv, kv_dim, D);
    float *o = n;                                                       /* [B, S, D]   */
    ldm_op_attention(be, o, q, k, v, B, tr->heads, S, Skv, tr->head_dim, D, D,
                  1.0f / sqrtf((float)tr->head_dim), 0);
    ldm_op_linear(be, q, o, at_->to_out.w, at_->to_out.b, M, D, D);            /* q <- to_out */
    ldm_op_add(be, hs, q, hs, (size_t)M * D);
    ldm_arena_reset(a, mark);
}

/* hs[B, S, D] += ff.net.2(geglu(ff.net.0.proj(norm3(hs)))), over row chunks. */
static void feed_forward_residual(const fwd *f, const unet_transformer *tr, const unet_tblock *blk,
                                  float *hs, int S) {
    ldm_backend *be = f->be;
    ldm_arena *a = f->a;
    int D = tr->inner, F = tr->ff_inner, M = f->B * S;
    /* Row chunks: the GEGLU input [rows, 2F] gets as many floats as hs itself, but at least
     * 4M (16 MiB): the CPU backend widens the fp16 weight on every call, which small
     * chunks would repeat too often. */
    size_t budget = (size_t)M * D > ((size_t)4 << 20) ? (size_t)M * D : ((size_t)4 << 20);
    int chunk = f->m->ff_rows > 0 ? f->m->ff_rows : (int)(budget / (2 * (size_t)F));
    if (chunk < 1) chunk = 1;
    if (chunk > M) chunk = M;
    size_t mark = ldm_arena_mark(a);
    float *n = ldm_arena_alloc(a, (size_t)M * D);                       /* [M, D]        */
    ldm_op_layer_norm(be, n, hs, blk->norm3.g, blk->norm3.b, M, D, 1e-5f);
    float *g = ldm_arena_alloc(a, (size_t)chunk * 2 * F);               /* [rows, 2F]    */
    float *u = ldm_arena_alloc(a, (size_t)chunk * F);                   /* [rows, F]     */
    for (int r0 = 0; r0 < M; r0 += chunk) {
        int rows = M - r0 < chunk ? M - r0 : chunk;
        ldm_op_linear(be, g, at(n, (size_t)r0 * D), blk->ff_proj.w, blk->ff_proj.b, rows, D, 2 * F);
        ldm_op_geglu(be, u, g, rows, F);
        ldm_op_linear(be, g, u, blk->ff_out.w, blk->ff_out.b, rows, F, D);     /* g <- [rows, D] */
        float *dst = at(hs, (size_t)r0 * D);
        ldm_op_add(be, dst, g, dst, (size_t)rows * D);
    }
    ldm_arena_reset(a, mark);
}

/* Transformer2DModel, in place: x[B, C, H, W] += proj_out(blocks(proj_in(norm(x)))). */
static void transformer_forward(const fwd *f, const unet_transformer *tr, float *x, int H, int W) {
    ldm_backend *be = f->be;
    ldm_arena *a = f->a;
    int B = f->B, C = tr->channels, D = tr->inner, S = H * W;
    size_t M = (size_t)B * S;
    size_t mark = ldm_arena_mark(a);
    float *hs = ldm_arena_alloc(a, M * D);                              /* [B, S, D] */
    size_t mark2 = ldm_arena_mark(a);
    float *t = ldm_arena_alloc(a, M * C);                               /* [B, C, S] */
    ldm_op_group_norm(be, t, x, tr->norm.g, tr->norm.b, B, C, S, f->m->groups, 1e-6f, 0);
    if (tr->linear_proj) {
        float *tt = ldm_arena_alloc(a, M * C);                          /* [B, S, C] */
        ldm_op_nchw_to_nhwc(be, tt, t, B, C, S);
        ldm_op_linear(be, hs, tt, tr->proj_in.w, tr->proj_in.b, (int)M, C, D);
    } else {
        float *p = ldm_arena_alloc(a, M * D);                           /* [B, D, S] */
        ldm_op_conv2d(be, p, t, tr->proj_in.w, tr->proj_in.b, B, C, H, W, D, 1, 1, 0);
        ldm_op_nchw_to_nhwc(be, hs, p, B, D, S);
    }
    ldm_arena_reset(a, mark2);
    for (int i = 0; i < tr->nblocks; i++) {
        const unet_tblock *blk = &tr->blocks[i];
        attention_residual(f, tr, &blk->norm1, &blk->attn1, hs, S);     /* self (or cross) */
        attention_residual(f, tr, &blk->norm2, &blk->attn2, hs, S);     /* cross           */
        feed_forward_residual(f, tr, blk, hs, S);
    }
    float *o = ldm_arena_alloc(a, M * C);                               /* [B, C, S] */
    if (tr->linear_proj) {
        float *p = ldm_arena_alloc(a, M * C);                           /* [B, S, C] */
        ldm_op_linear(be, p, hs, tr->proj_out.w, tr->proj_out.b, (int)M, D, C);
        ldm_op_nhwc_to_nchw(be, o, p, B, C, S);
    } else {
        float *p = ldm_arena_alloc(a, M * D);                           /* [B, D, S] */
        ldm_op_nhwc_to_nchw(be, p, hs, B, D, S);
        ldm_op_conv2d(be, o, p, tr->proj_out.w, tr->proj_out.b, B, D, H, W, C, 1, 1, 0);
    }
    ldm_op_add(be, x, o, x, M * C);                                            /* + residual */
    ldm_arena_reset(a, mark);
}

/* Host sinusoidal embedding, as diffusers get_timestep_embedding computes it in float32:
 * freq_i = exp(-ln(10000) * i / (half - shift)), emb = [sin(t f), cos(t f)] (or flipped). */
static void timestep_embedding(float *out, float t, int dim, int flip, float shift) {
    int half = dim / 2;
    const float neg_log_period = (float)-log(10000.0);
    for (int i = 0; i < half; i++) {
        float exponent = ((float)i * neg_log_period) / ((float)half - shift);
        float arg = t * expf(exponent);
        float s = sinf(arg), c = cosf(arg);
        out[i] = flip ? c : s;
        out[half + i] = flip ? s : c;
    }
    if (dim % 2) out[dim - 1] = 0.0f;
}

typedef struct {
    float *p;       /* [B, C, H, W] */
    size_t mark;    /* arena mark just before it was allocated */
    int C, H, W;
} skip_entry;

static int unet_run(const ldm_unet *m, ldm_backend *be, ldm_arena *a, const float *x,
                    float t, const float *ctx, int B, int H, int W, int T, float *out) {
    int n = m->nblocks;
    if (B < 1 || T < 1 || H < 1 || W < 1)
        return ldm_error("unet: bad shape B=%d H=%d W=%d T=%d", B, H, W, T);
    /* Any size: each downsampler gives ceil(H/2).  As diffusers decides: when H or W is not
     * a multiple of 2^(number of upsamplers), every upsampler resizes to the size of the skip
     * it meets next (F.interpolate(size=...)), otherwise it doubles (scale_factor=2). */
    int nup = 0;
    for (int i = 0; i < n; i++) nup += m->up[i].has_sampler;
    const int up_factor = 1 << nup, explicit_size = H % up_factor || W % up_factor;
    size_t mark0 = ldm_arena_mark(a);
    fwd f = {m, be, a, B, T, NULL, NULL};
    int c0 = m->block_out[0];

    /* time embedding: sinusoid on the host, the MLP on the backend */
    float *tin_host = ldm_xmalloc((size_t)B * c0 * sizeof(float));
    for (int b = 0; b < B; b++) timestep_embedding(tin_host + (size_t)b * c0, t, c0, m->flip_sin_to_cos, m->freq_shift);
    float *tin = ldm_arena_alloc(a, (size_t)B * c0);                    /* [B, C0]   */
    ldm_be_upload(be, tin, tin_host, (size_t)B * c0);
    free(tin_host);
    float *e1 = ldm_arena_alloc(a, (size_t)B * m->temb_dim);            /* [B, temb] */
    ldm_op_linear(be, e1, tin, m->time_linear_1.w, m->time_linear_1.b, B, c0, m->temb_dim);
    ldm_op_silu(be, e1, e1, (size_t)B * m->temb_dim);
    float *emb = ldm_arena_alloc(a, (size_t)B * m->temb_dim);           /* [B, temb] */
    ldm_op_linear(be, emb, e1, m->time_linear_2.w, m->time_linear_2.b, B, m->temb_dim, m->temb_dim);
    ldm_op_silu(be, emb, emb, (size_t)B * m->temb_dim);                        /* silu(emb) */
    f.temb_act = emb;

    float *c = ldm_arena_alloc(a, (size_t)B * T * m->ctx_dim);          /* [B, T, ctx] */
    if (ctx) ldm_be_upload(be, c, ctx, (size_t)B * T * m->ctx_dim);
    f.ctx = c;

    size_t nx = (size_t)B * m->in_channels * H * W;
    float *xin = ldm_arena_alloc(a, nx);                                /* [B, Cin, H, W] */
    if (x && m->center_input) {
        float *xc = ldm_xmalloc(nx * sizeof(float));
        for (size_t i = 0; i < nx; i++) xc[i] = 2.0f * x[i] - 1.0f;
        ldm_be_upload(be, xin, xc, nx);
        free(xc);
    } else if (x) {
        ldm_be_upload(be, xin, x, nx);
    }

    skip_entry skips[4 * MAX_BLOCKS * 8];
    int nskip = 0;
    skip_entry h = {NULL, ldm_arena_mark(a), c0, H, W};
    h.p = ldm_arena_alloc(a, (size_t)B * c0 * H * W);                   /* [B, C0, H, W] */
    ldm_op_conv2d(be, h.p, xin, m->conv_in.w, m->conv_in.b, B, m->in_channels, H, W, c0, 3, 1, 1);
    skips[nskip++] = h;

    /* down path: every resnet(+transformer) output and every downsampled tensor is a skip */
    for (int i = 0; i < n; i++) {
        const unet_block *blk = &m->down[i];
        for (int j = 0; j < blk->nlayers; j++) {
            skip_entry o = {NULL, ldm_arena_mark(a), blk->cout, h.H, h.W};
            o.p = ldm_arena_alloc(a, (size_t)B * o.C * o.H * o.W);
            resnet_forward(&f, &blk->resnets[j], o.p, h.p, h.H, h.W);
            if (blk->attentions) transformer_forward(&f, &blk->attentions[j], o.p, o.H, o.W);
            skips[nskip++] = h = o;
        }
        if (blk->has_sampler) {  /* 3x3, stride 2, padding 1: ceil(H/2) */
            skip_entry o = {NULL, ldm_arena_mark(a), blk->cout, (h.H + 1) / 2, (h.W + 1) / 2};
            o.p = ldm_arena_alloc(a, (size_t)B * o.C * o.H * o.W);
            ldm_op_conv2d(be, o.p, h.p, blk->sampler.w, blk->sampler.b, B, h.C, h.H, h.W, o.C, 3, 2, 1);
            skips[nskip++] = h = o;
        }
    }

    /* mid block */
    {
        skip_entry m1 = {NULL, ldm_arena_mark(a), h.C, h.H, h.W};
        m1.p = ldm_arena_alloc(a, (size_t)B * h.C * h.H * h.W);
        resnet_forward(&f, &m->mid_resnets[0], m1.p, h.p, h.H, h.W);
        transformer_forward(&f, &m->mid_attention, m1.p, h.H, h.W);
        skip_entry m2 = {NULL, ldm_arena_mark(a), h.C, h.H, h.W};
        m2.p = ldm_arena_alloc(a, (size_t)B * h.C * h.H * h.W);
        resnet_forward(&f, &m->mid_resnets[1], m2.p, m1.p, h.H, h.W);
        h = m2;
    }

    /* up path: cat(h, skip) -> resnet, whose output replaces the skip on the stack */
    for (int i = 0; i < n; i++) {
        const unet_block *blk = &m->up[i];
        for (int j = 0; j < blk->nlayers; j++) {
            skip_entry s = skips[--nskip];
            size_t HW = (size_t)h.H * h.W, n_out = (size_t)B * blk->cout * HW;
            reserve_from(a, s.mark, n_out);
            float *cat = ldm_arena_alloc(a, (size_t)B * (h.C + s.C) * HW); /* [B, Ch+Cs, H, W] */
            ldm_op_concat_channels(be, cat, h.p, h.C, s.p, s.C, B, (int)HW);
            resnet_forward(&f, &blk->resnets[j], s.p, cat, h.H, h.W);
            skip_entry o = {reclaim(a, s.mark, n_out, s.p), s.mark, blk->cout, h.H, h.W};
            if (blk->attentions) transformer_forward(&f, &blk->attentions[j], o.p, o.H, o.W);
            h = o;
        }
        if (blk->has_sampler) {
            /* out[B, C, Ho, Wo] goes where h was; the upsampled input sits above it.
             * Ho x Wo = 2H x 2W, or the next skip's size when sizes are explicit. */
            int Ho = 2 * h.H, Wo = 2 * h.W;
            if (explicit_size && nskip > 0) {
                Ho = skips[nskip - 1].H;
                Wo = skips[nskip - 1].W;
            }
            size_t n_out = (size_t)B * h.C * Ho * Wo;
            reserve_from(a, h.mark, n_out);
            float *u = ldm_arena_alloc(a, n_out);                       /* [B, C, Ho, Wo] */
            if (explicit_size) ldm_op_upsample_nearest(be, u, h.p, B, h.C, h.H, h.W, Ho, Wo);
            else ldm_op_upsample_nearest2x(be, u, h.p, B, h.C, h.H, h.W);
            ldm_op_conv2d(be, h.p, u, blk->sampler.w, blk->sampler.b, B, h.C, Ho, Wo, h.C, 3, 1, 1);
            h.p = reclaim(a, h.mark, n_out, h.p);
            h.H = Ho;
            h.W = Wo;
        }
    }

    /* out: conv_out(silu(conv_norm_out(h))) */
    size_t HW = (size_t)H * W;
    float *t1 = ldm_arena_alloc(a, (size_t)B * c0 * HW);               /* [B, C0, H, W]   */
    ldm_op_group_norm(be, t1, h.p, m->conv_norm_out.g, m->conv_norm_out.b, B, c0, (int)HW, m->groups, m->eps, 1);
    float *o = ldm_arena_alloc(a, (size_t)B * m->out_channels * HW);   /* [B, Cout, H, W] */
    ldm_op_conv2d(be, o, t1, m->conv_out.w, m->conv_out.b, B, c0, H, W, m->out_channels, 3, 1, 1);
    if (out) ldm_be_download(be, out, o, (size_t)B * m->out_channels * HW);
    ldm_arena_reset(a, mark0);
    return ldm_backend_status(be);
}

size_t ldm_unet_arena_bytes(const ldm_unet *m, int B, int H, int W, int T) {
    ldm_arena a;
    ldm_arena_measure(&a);
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    int rc = unet_run(m, dry, &a, NULL, 0.0f, NULL, B, H, W, T, NULL);
    ldm_backend_free(dry);
    return rc ? 0 : a.peak;
}

int ldm_unet_forward(ldm_unet *m, ldm_arena *a, const float *x, float t, const float *ctx, int B,
                     int H, int W, int T, float *out) {
    return unet_run(m, m->be, a, x, t, ctx, B, H, W, T, out);
}
