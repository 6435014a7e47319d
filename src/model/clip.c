/* clip.c - the CLIP text encoder (transformers CLIPTextModel) on the ops interface.
 *
 * token embedding + learned positions -> N pre-norm transformer layers
 *   x = x + out_proj(causal_self_attention(layer_norm1(x)))
 *   x = x + fc2(act(fc1(layer_norm2(x))))          act = quick_gelu or gelu (hidden_act)
 * -> final_layer_norm.
 * clip_skip k returns hidden_states[-k] of transformers' tuple (index 0 = embeddings,
 * index i = output of layer i), i.e. the output of layer N-k+1, through final_layer_norm.
 * Stable Diffusion pipelines pass no padding mask: every position attends causally.
 * Tensor names are "text_encoder." + the transformers state-dict key.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/limits.h"
#include "model/config.h"
#include "model/model.h"

#define MEMBER "text_encoder/config.json"
#define PFX "text_encoder.text_model."

enum { ACT_QUICK_GELU, ACT_GELU };

typedef struct {
    ldm_tensor *ln1_w, *ln1_b;
    ldm_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    ldm_tensor *ln2_w, *ln2_b;
    ldm_tensor *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct ldm_clip {
    ldm_backend *be;
    int owns_be;                         /* ldm_clip_from_config: a dry handle of its own */
    void *weights;                       /* the backend's copy of the weights, or NULL */
    int hidden, inter, n_layers, heads, max_pos, vocab, act;
    float eps;
    ldm_tensor *tok_emb, *pos_emb;       /* [vocab, C], [max_pos, C] */
    ldm_tensor *final_ln_w, *final_ln_b; /* [C] */
    clip_layer *layers;
};

/* Every count is bounded (core/limits.h) before anything is allocated from it. */
static int parse_config(ldm_clip *m, json_t *j) {
    const char *act;
    int rc = -1;
    if (cfg_count(j, MEMBER, "hidden_size", 1, LDM_MAX_CHANNELS, &m->hidden) ||
        cfg_count(j, MEMBER, "intermediate_size", 1, LDM_MAX_WIDTH, &m->inter) ||
        cfg_count(j, MEMBER, "num_hidden_layers", 1, LDM_MAX_LAYERS, &m->n_layers) ||
        cfg_count(j, MEMBER, "num_attention_heads", 1, LDM_MAX_CHANNELS, &m->heads) ||
        cfg_count(j, MEMBER, "max_position_embeddings", 1, LDM_MAX_POSITIONS, &m->max_pos) ||
        cfg_count_or(j, MEMBER, "vocab_size", 49408, 1, LDM_MAX_VOCAB, &m->vocab) ||
        cfg_float_or(j, MEMBER, "layer_norm_eps", 1e-5f, &m->eps) ||
        cfg_str(j, MEMBER, "hidden_act", &act))
        goto out;
    if (!strcmp(act, "quick_gelu")) m->act = ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu")) m->act = ACT_GELU;
    else {
        ldm_error("%s: field \"hidden_act\": \"%s\" is not supported (expected \"quick_gelu\" "
                  "or \"gelu\")", MEMBER, act);
        goto out;
    }
    if (m->hidden % m->heads) {
        ldm_error("%s: field \"hidden_size\" (%d) is not a multiple of \"num_attention_heads\" "
                  "(%d)", MEMBER, m->hidden, m->heads);
        goto out;
    }
    if (!(m->eps > 0)) {
        ldm_error("%s: field \"layer_norm_eps\": expected a positive number, found %g", MEMBER,
                  m->eps);
        goto out;
    }
    rc = 0;
out:
    return rc;
}

/* The model from a parsed config: weights from b, or weightless when b is NULL. */
static ldm_clip *clip_build(json_t *j, const ldm_bundle *b, ldm_backend *be, ldm_weight_list_fn want,
                            void *user) {
    ldm_clip *m = ldm_xcalloc(1, sizeof *m);
    m->be = be;
    int rc = parse_config(m, j);
    json_decref(j);
    if (rc) { free(m); return NULL; }
    const int C = m->hidden, I = m->inter;
    ldm_loader L = {b, be, 0, NULL, 0, 0, want, user};
    m->tok_emb = ldm_load_weight(&L, LDM_MAT(m->vocab, C), PFX "embeddings.token_embedding.weight");
    m->pos_emb = ldm_load_weight(&L, LDM_MAT(m->max_pos, C),
                                 PFX "embeddings.position_embedding.weight");
    m->layers = ldm_xcalloc((size_t)m->n_layers, sizeof *m->layers);
    for (int l = 0; l < m->n_layers && !L.failed; l++) {
        clip_layer *y = &m->layers[l];
#define LW(shape, name) ldm_load_weight(&L, shape, PFX "encoder.layers.%d." name, l)
        y->ln1_w = LW(LDM_VEC(C), "layer_norm1.weight");
        y->ln1_b = LW(LDM_VEC(C), "layer_norm1.bias");
        y->q_w = LW(LDM_MAT(C, C), "self_attn.q_proj.weight");
        y->q_b = LW(LDM_VEC(C), "self_attn.q_proj.bias");
        y->k_w = LW(LDM_MAT(C, C), "self_attn.k_proj.weight");
        y->k_b = LW(LDM_VEC(C), "self_attn.k_proj.bias");
        y->v_w = LW(LDM_MAT(C, C), "self_attn.v_proj.weight");
        y->v_b = LW(LDM_VEC(C), "self_attn.v_proj.bias");
        y->o_w = LW(LDM_MAT(C, C), "self_attn.out_proj.weight");
        y->o_b = LW(LDM_VEC(C), "self_attn.out_proj.bias");
        y->ln2_w = LW(LDM_VEC(C), "layer_norm2.weight");
        y->ln2_b = LW(LDM_VEC(C), "layer_norm2.bias");
        y->fc1_w = LW(LDM_MAT(I, C), "mlp.fc1.weight");
        y->fc1_b = LW(LDM_VEC(I), "mlp.fc1.bias");
        y->fc2_w = LW(LDM_MAT(C, I), "mlp.fc2.weight");
        y->fc2_b = LW(LDM_VEC(C), "mlp.fc2.bias");
#undef LW
    }
    m->final_ln_w = ldm_load_weight(&L, LDM_VEC(C), PFX "final_layer_norm.weight");
    m->final_ln_b = ldm_load_weight(&L, LDM_VEC(C), PFX "final_layer_norm.bias");
    if (ldm_loader_finish(&L, &m->weights)) { ldm_clip_free(m); return NULL; }
    return m;
}

ldm_clip *ldm_clip_load(const ldm_bundle *b, ldm_backend *be) {
    json_t *j = cfg_load(b, MEMBER);
    return j ? clip_build(j, b, be, NULL, NULL) : NULL;
}

static ldm_clip *clip_from_config(const char *config_json, ldm_weight_list_fn want, void *user) {
    json_t *j = cfg_parse(config_json, MEMBER);
    if (!j) return NULL;
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    ldm_clip *m = clip_build(j, NULL, dry, want, user);
    if (m) m->owns_be = 1;
    else ldm_backend_free(dry);
    return m;
}

ldm_clip *ldm_clip_from_config(const char *config_json) {
    return clip_from_config(config_json, NULL, NULL);
}

int ldm_clip_list_weights(const char *config_json, ldm_weight_list_fn fn, void *user) {
    ldm_clip *m = clip_from_config(config_json, fn, user);
    ldm_clip_free(m);
    return m ? 0 : -1;
}

void ldm_clip_free(ldm_clip *m) {
    if (!m) return;
    ldm_be_release_weights(m->be, m->weights);
    if (m->owns_be) ldm_backend_free(m->be);
    free(m->layers);
    free(m);
}

int ldm_clip_hidden_size(const ldm_clip *m) { return m->hidden; }
int ldm_clip_max_length(const ldm_clip *m) { return m->max_pos; }

/* The forward pass on backend `be`.  ids (host) and out (host) may be NULL on the dry
 * backend, where only the arena's peak matters. */
static void clip_forward(const ldm_clip *m, ldm_backend *be, ldm_arena *a,
                         const int32_t *ids, int B, int clip_skip, float *out) {
    const int T = m->max_pos, C = m->hidden, I = m->inter, H = m->heads, D = C / H;
    const int M = B * T;
    const size_t MC = (size_t)M * C;
    const size_t mark = ldm_arena_mark(a);
    float *x = ldm_arena_alloc(a, MC);                /* [B, T, C] residual stream */
    float *h = ldm_arena_alloc(a, MC);                /* [B, T, C] */
    float *q = ldm_arena_alloc(a, MC);                /* [B, T, C] */
    float *k = ldm_arena_alloc(a, MC);                /* [B, T, C] */
    float *v = ldm_arena_alloc(a, MC);                /* [B, T, C] */
    float *mlp = ldm_arena_alloc(a, (size_t)M * I);   /* [B, T, I] */

    if (ids) ldm_op_embedding(be, x, m->tok_emb, ids, M, C);   /* [B, T, C] (no ids: dry) */
    ldm_op_add_positional(be, x, m->pos_emb, B, T, C);
    const int n_run = m->n_layers + 1 - clip_skip;    /* hidden_states[-clip_skip] */
    const float scale = 1.0f / sqrtf((float)D);
    for (int l = 0; l < n_run; l++) {
        const clip_layer *y = &m->layers[l];
        ldm_op_layer_norm(be, h, x, y->ln1_w, y->ln1_b, M, C, m->eps);
        ldm_op_linear(be, q, h, y->q_w, y->q_b, M, C, C);
        ldm_op_linear(be, k, h, y->k_w, y->k_b, M, C, C);
        ldm_op_linear(be, v, h, y->v_w, y->v_b, M, C, C);
        ldm_op_attention(be, h, q, k, v, B, H, T, T, D, C, C, scale, 1);   /* [B, T, C] */
        ldm_op_linear(be, q, h, y->o_w, y->o_b, M, C, C);
        ldm_op_add(be, x, x, q, MC);
        ldm_op_layer_norm(be, h, x, y->ln2_w, y->ln2_b, M, C, m->eps);
        ldm_op_linear(be, mlp, h, y->fc1_w, y->fc1_b, M, C, I);          /* [B, T, I] */
        if (m->act == ACT_QUICK_GELU) ldm_op_quick_gelu(be, mlp, mlp, (size_t)M * I);
        else ldm_op_gelu(be, mlp, mlp, (size_t)M * I);
        ldm_op_linear(be, h, mlp, y->fc2_w, y->fc2_b, M, I, C);          /* [B, T, C] */
        ldm_op_add(be, x, x, h, MC);
    }
    ldm_op_layer_norm(be, h, x, m->final_ln_w, m->final_ln_b, M, C, m->eps);
    if (out) ldm_be_download(be, out, h, MC);
    ldm_arena_reset(a, mark);
}

size_t ldm_clip_arena_bytes(const ldm_clip *m, int B) {
    ldm_arena a;
    ldm_arena_measure(&a);
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    clip_forward(m, dry, &a, NULL, B, 1, NULL);
    ldm_backend_free(dry);
    return a.peak;
}

int ldm_clip_encode(ldm_clip *m, ldm_arena *a, const int32_t *ids, int B, int clip_skip,
                    float *out) {
    if (B <= 0) return ldm_error("clip: batch size %d, expected at least 1", B);
    if (clip_skip < 1 || clip_skip > m->n_layers)
        return ldm_error("clip_skip %d is out of range: this text encoder has %d layers, so "
                         "clip_skip must be 1..%d", clip_skip, m->n_layers, m->n_layers);
    for (int i = 0; i < B * m->max_pos; i++)
        if (ids[i] < 0 || ids[i] >= m->vocab)
            return ldm_error("clip: token id %d at sequence %d position %d is outside the "
                             "vocabulary (0..%d)", (int)ids[i], i / m->max_pos,
                             i % m->max_pos, m->vocab - 1);
    clip_forward(m, m->be, a, ids, B, clip_skip, out);
    return ldm_backend_status(m->be);
}
