/* test_clip.c - the CLIP text encoder against transformers (tests/fixtures/expected/
 * {sd1,sd2}_text.safetensors, and expected_tf5/sd1_tf5_text.safetensors for the folder
 * transformers 5 wrote, whose weights have no "text_model." prefix): every fixture prompt
 * at clip_skip 1 and 2, a batch of two, argument checks, and loader errors for broken
 * configs (unsupported hidden_act, missing field, weight of the wrong shape) that must
 * name the field or tensor.
 */
#include <string.h>

#include "test.h"
#include "model_test_util.h"

#include "format/bundle.h"
#include "model/model.h"
#include "backend/ops.h"

#define TOL mt_tol(1e-4) /* see model_test_util.h */
#define N_PROMPTS 12

static void ids_from(const ldm_safetensors *st, int i, int32_t *ids, int T) {
    char name[64];
    snprintf(name, sizeof name, "ids_%d", i);
    float *f = mt_f32(st, name, (size_t)T);
    for (int t = 0; t < T; t++) ids[t] = f ? (int32_t)f[t] : 0;
    free(f);
}

static void test_model(const char *tag, const char *expected_dir, int layers, const char *bundle_path) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/%s/%s_text.safetensors", expected_dir, tag);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "%s", ldm_last_error());
    ldm_bundle *b = ldm_bundle_open(bundle_path);
    CHECK(b != NULL, "%s", ldm_last_error());
    if (!st || !b) { ldm_st_close(st); ldm_bundle_close(b); return; }
    ldm_clip *m = ldm_clip_load(b, mt_cpu());
    CHECK(m != NULL, "%s: %s", tag, ldm_last_error());
    if (!m) { ldm_st_close(st); ldm_bundle_close(b); return; }

    const int T = ldm_clip_max_length(m), C = ldm_clip_hidden_size(m);
    CHECK(T == 77, "max length %d", T);
    const size_t n = (size_t)T * C;
    size_t bytes1 = ldm_clip_arena_bytes(m, 1), bytes2 = ldm_clip_arena_bytes(m, 2);
    CHECK(bytes1 >= 5 * n * sizeof(float) && bytes2 > bytes1, "arena bytes %zu %zu", bytes1,
          bytes2);
    ldm_arena a;
    CHECK(ldm_arena_init(&a, mt_cpu(), bytes2) == 0, "%s", ldm_last_error());

    int32_t ids[2 * 77];
    float *out = ldm_xmalloc(2 * n * sizeof(float));
    double worst = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        ids_from(st, i, ids, T);
        for (int skip = 1; skip <= 2; skip++) {
            char name[64];
            snprintf(name, sizeof name, "hidden_%d_skip%d", i, skip);
            float *want = mt_f32(st, name, n);
            int rc = ldm_clip_encode(m, &a, ids, 1, skip, out);
            CHECK(rc == 0, "%s", ldm_last_error());
            CHECK(a.used == 0, "arena not reset: %zu", a.used);
            if (want) {
                double e = rel_l2(out, want, n);
                if (e > worst) worst = e;
                CHECK(e <= TOL, "%s %s: rel L2 %.3g (max abs %.3g)", tag, name, e,
                      mt_max_abs_diff(out, want, n));
            }
            free(want);
        }
    }
    printf("%s: text encoder worst rel L2 over %d prompts x 2 skips: %.3g\n", tag, N_PROMPTS,
           worst);

    /* A batch of two gives each sequence's own result. */
    ids_from(st, 5, ids, T);
    ids_from(st, 0, ids + T, T);
    CHECK(ldm_clip_encode(m, &a, ids, 2, 2, out) == 0, "%s", ldm_last_error());
    float *w5 = mt_f32(st, "hidden_5_skip2", n), *w0 = mt_f32(st, "hidden_0_skip2", n);
    if (w5 && w0) {
        CHECK(rel_l2(out, w5, n) <= TOL, "batch[0] rel L2 %.3g", rel_l2(out, w5, n));
        CHECK(rel_l2(out + n, w0, n) <= TOL, "batch[1] rel L2 %.3g", rel_l2(out + n, w0, n));
    }
    free(w5);
    free(w0);

    /* Out-of-range clip_skip and token ids are errors that name them. */
    CHECK(ldm_clip_encode(m, &a, ids, 1, 0, out) != 0 &&
              strstr(ldm_last_error(), "clip_skip"), "skip 0: %s", ldm_last_error());
    CHECK(ldm_clip_encode(m, &a, ids, 1, layers, out) == 0, "%s", ldm_last_error());
    CHECK(ldm_clip_encode(m, &a, ids, 1, layers + 1, out) != 0 &&
              strstr(ldm_last_error(), "clip_skip"), "skip N+1: %s", ldm_last_error());
    ids[3] = 49408;
    CHECK(ldm_clip_encode(m, &a, ids, 1, 1, out) != 0 && strstr(ldm_last_error(), "49408"),
          "bad id: %s", ldm_last_error());

    free(out);
    ldm_arena_free(&a);
    ldm_clip_free(m);
    ldm_bundle_close(b);
    ldm_st_close(st);
}

/* The dry backend (used by ldmpack to validate) loads the model too. */
static void test_dry_load(const char *bundle_path) {
    ldm_bundle *b = ldm_bundle_open(bundle_path);
    if (!b) return;
    ldm_clip *m = ldm_clip_load(b, mt_dry());
    CHECK(m != NULL, "dry load: %s", ldm_last_error());
    ldm_clip_free(m);
    ldm_bundle_close(b);
}

/* ldm_clip_from_config: the weightless model (dry backend) of the config text alone. */
static void test_from_config(void) {
    size_t len;
    char *cfg = ldm_read_file("tests/fixtures/models/sd1/text_encoder/config.json", &len);
    ldm_clip *m = cfg ? ldm_clip_from_config(cfg) : NULL;
    CHECK(m && ldm_clip_hidden_size(m) == 32 && ldm_clip_max_length(m) == 77, "from config: %s",
          ldm_last_error());
    CHECK(m && ldm_clip_arena_bytes(m, 2) > 0, "arena bytes");
    ldm_clip_free(m);
    free(cfg);
    m = ldm_clip_from_config("{\"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": "
                             "2147483647, \"num_attention_heads\": 4, \"max_position_embeddings\": 77, "
                             "\"hidden_act\": \"quick_gelu\"}");
    CHECK(!m && strstr(ldm_last_error(), "text_encoder/config.json: field \"num_hidden_layers\""),
          "2^31 - 1 layers: %s", ldm_last_error());
    ldm_clip_free(m);
}

static int load_clip(const ldm_bundle *b) {
    ldm_clip *m = ldm_clip_load(b, mt_cpu());
    ldm_clip_free(m);
    return m != NULL;
}

/* One text_encoder/config.json field changed: the error must name it (see mt_expect_config_error). */
static void expect_config_error(const char *tmp, const char *field, const char *value,
                                const char *needle) {
    mt_expect_config_error(tmp, "text_encoder/config.json", load_clip, field, value, needle);
}

int main(void) {
    const char *tmp = mt_tmpdir();
    char log[4096];
    const char *tags[3] = {"sd1", "sd2", "sd1_tf5"};
    const char *exp_dirs[3] = {"expected", "expected", "expected_tf5"};
    const int layers[3] = {3, 2, 3};
    for (int k = 0; k < 3; k++) {
        char folder[256], bundle[512];
        snprintf(folder, sizeof folder, "tests/fixtures/models/%s", tags[k]);
        snprintf(bundle, sizeof bundle, "%s/%s.ldmb", tmp, tags[k]);
        int rc = mt_pack(folder, bundle, log, sizeof log);
        CHECK(rc == 0, "packing %s failed: %s", folder, log);
        if (rc) continue;
        test_model(tags[k], exp_dirs[k], layers[k], bundle);
        test_dry_load(bundle);
        if (k == 2) { /* packed under the transformers 4 names */
            ldm_bundle *b = ldm_bundle_open(bundle);
            CHECK(b && ldm_bundle_tensor(b, "text_encoder.text_model.embeddings.token_embedding.weight") &&
                      ldm_bundle_tensor(b, "text_encoder.text_model.final_layer_norm.weight") &&
                      !ldm_bundle_tensor(b, "text_encoder.embeddings.token_embedding.weight"),
                  "sd1_tf5: text encoder tensors not under text_encoder.text_model.");
            ldm_bundle_close(b);
        }
    }

    expect_config_error(tmp, "hidden_act", "\"relu\"", "hidden_act");
    expect_config_error(tmp, "num_hidden_layers", NULL, "num_hidden_layers");
    expect_config_error(tmp, "num_attention_heads", "\"four\"", "num_attention_heads");
    expect_config_error(tmp, "num_attention_heads", "5", "num_attention_heads");
    /* the config and the weights disagree: fc1 must be [65, 32] but is [64, 32] */
    expect_config_error(tmp, "intermediate_size", "65",
                        "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight");
    /* more layers than the checkpoint has */
    expect_config_error(tmp, "num_hidden_layers", "4",
                        "text_encoder.text_model.encoder.layers.3.");
    /* counts beyond core/limits.h: refused naming the field (they used to allocate
     * hundreds of GB and abort "out of memory", leaving OUT.tmp.PID behind) */
    expect_config_error(tmp, "num_hidden_layers", "2147483647",
                        "field \"num_hidden_layers\": 2147483647 is out of range (expected 1..64)");
    expect_config_error(tmp, "hidden_size", "1e9", "field \"hidden_size\": 1000000000 is out of range");
    expect_config_error(tmp, "intermediate_size", "2147483647", "intermediate_size");
    expect_config_error(tmp, "max_position_embeddings", "100000", "max_position_embeddings");
    expect_config_error(tmp, "vocab_size", "2147483647", "vocab_size");
    expect_config_error(tmp, "num_attention_heads", "0", "num_attention_heads");
    test_from_config();

    mt_cleanup();
    TEST_END();
}
