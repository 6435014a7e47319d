/* test_unet.c - the UNet against diffusers (tests/fixtures/expected/{sd1,sd2}_unet.safetensors):
 * x [2,4,8,8], ctx [2,77,C] at t = 981 and t = 1 -> out [2,4,8,8] (also for the diffusers 0.42
 * folder, expected_tf5/sd1_tf5_unet.safetensors); batch independence; the
 * arena sizing; odd latent sizes ({sd1,sd2}_unet_odd.safetensors); refused configs (at pack
 * time by ldm_pack, and by the loader directly) naming the field; a weight of the wrong shape naming the tensor; and the arena an
 * SD-1.5-sized UNet needs at 64x64 latents (a weightless model from its config).
 */
#include <math.h>
#include <string.h>

#include "test.h"
#include "model_test_util.h"

#include "format/bundle.h"
#include "model/model.h"
#include "backend/ops.h"
#include "app/pack.h"

#define TOL mt_tol(1e-4) /* see model_test_util.h */

static ldm_unet *open_unet(const char *bundle_path, ldm_bundle **pb) {
    *pb = ldm_bundle_open(bundle_path);
    CHECK(*pb != NULL, "%s", ldm_last_error());
    if (!*pb) return NULL;
    ldm_unet *m = ldm_unet_load(*pb, mt_cpu());
    CHECK(m != NULL, "%s: %s", bundle_path, ldm_last_error());
    return m;
}

/* One model against its fixture: both timesteps, then batch element 1 alone. */
static void test_fixture(const char *tag, const char *expected_dir, const char *bundle_path, int ctx_dim) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/%s/%s_unet.safetensors", expected_dir, tag);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "%s", ldm_last_error());
    ldm_bundle *b = NULL;
    ldm_unet *m = st ? open_unet(bundle_path, &b) : NULL;
    if (!m) { ldm_st_close(st); ldm_bundle_close(b); return; }

    const int B = 2, C = 4, H = 8, W = 8, T = 77;
    CHECK(ldm_unet_in_channels(m) == 4 && ldm_unet_out_channels(m) == 4, "channels %d %d",
          ldm_unet_in_channels(m), ldm_unet_out_channels(m));
    CHECK(ldm_unet_sample_size(m) == 8, "sample_size %d", ldm_unet_sample_size(m));
    CHECK(ldm_unet_context_dim(m) == ctx_dim, "context dim %d", ldm_unet_context_dim(m));

    const size_t n = (size_t)B * C * H * W, nc = (size_t)B * T * ctx_dim;
    float *x = mt_f32(st, "x", n), *ctx = mt_f32(st, "ctx", nc);
    float *t1 = mt_f32(st, "t", 1), *t2 = mt_f32(st, "t2", 1);
    float *want1 = mt_f32(st, "out", n), *want2 = mt_f32(st, "out2", n);
    float *out = ldm_xmalloc(n * sizeof(float));
    size_t bytes = ldm_unet_arena_bytes(m, B, H, W, T);
    CHECK(bytes > 0, "arena bytes: %s", ldm_last_error());
    printf("%s: arena %zu bytes for B=%d %dx%d T=%d\n", tag, bytes, B, H, W, T);
    ldm_arena a;
    CHECK(ldm_arena_init(&a, mt_cpu(), bytes) == 0, "%s", ldm_last_error());
    if (x && ctx && t1 && t2 && want1 && want2 && a.base) {
        CHECK(ldm_unet_forward(m, &a, x, t1[0], ctx, B, H, W, T, out) == 0, "%s",
              ldm_last_error());
        CHECK(a.used == 0, "arena not reset: %zu", a.used);
        CHECK(a.peak == bytes, "real peak %zu != measured %zu", a.peak, bytes);
        double e1 = rel_l2(out, want1, n);
        printf("%s: t=%g rel L2 %.3g (max abs %.3g)\n", tag, t1[0], e1,
               mt_max_abs_diff(out, want1, n));
        CHECK(e1 <= TOL, "%s: t=%g rel L2 %.3g", tag, t1[0], e1);

        CHECK(ldm_unet_forward(m, &a, x, t2[0], ctx, B, H, W, T, out) == 0, "%s",
              ldm_last_error());
        double e2 = rel_l2(out, want2, n);
        printf("%s: t=%g rel L2 %.3g (max abs %.3g)\n", tag, t2[0], e2,
               mt_max_abs_diff(out, want2, n));
        CHECK(e2 <= TOL, "%s: t=%g rel L2 %.3g", tag, t2[0], e2);

        /* batch element 1 alone gives the same result as inside the batch */
        size_t n1 = n / 2;
        CHECK(ldm_unet_forward(m, &a, x + n1, t1[0], ctx + nc / 2, 1, H, W, T, out) == 0, "%s",
              ldm_last_error());
        double e3 = rel_l2(out, want1 + n1, n1);
        CHECK(e3 <= TOL, "%s: batch of one rel L2 %.3g", tag, e3);

        /* the feed-forward in chunks of 7 rows (an odd split) changes nothing */
        ldm_unet_set_ff_chunk(m, 7);
        CHECK(ldm_unet_forward(m, &a, x, t1[0], ctx, B, H, W, T, out) == 0, "%s",
              ldm_last_error());
        double e4 = rel_l2(out, want1, n);
        CHECK(e4 <= TOL, "%s: 7-row feed-forward chunks rel L2 %.3g", tag, e4);
        ldm_unet_set_ff_chunk(m, 0);

        /* an empty latent is refused */
        CHECK(ldm_unet_forward(m, &a, x, t1[0], ctx, B, 0, 8, T, out) != 0, "0x8 accepted");
        CHECK(strstr(ldm_last_error(), "bad shape") != NULL, "message: %s", ldm_last_error());
    }
    free(x); free(ctx); free(t1); free(t2); free(want1); free(want2); free(out);
    ldm_arena_free(&a);
    ldm_unet_free(m);
    ldm_bundle_close(b);
    ldm_st_close(st);
}

/* Latent sizes that are not multiples of 2^(upsamplers) ({sd1,sd2}_unet_odd.safetensors:
 * x_k [2,4,H,W] -> out_k at t, ctx): diffusers rounds up going down and resizes each
 * upsampler's output to the next skip's size.  Each size gets its own measured arena. */
static void test_odd(const char *tag, const char *bundle_path, int ctx_dim, int nshapes,
                     const int (*hw)[2]) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/expected/%s_unet_odd.safetensors", tag);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "%s", ldm_last_error());
    ldm_bundle *b = NULL;
    ldm_unet *m = st ? open_unet(bundle_path, &b) : NULL;
    if (!m) { ldm_st_close(st); ldm_bundle_close(b); return; }
    const int B = 2, C = 4, T = 77;
    const size_t nc = (size_t)B * T * ctx_dim;
    float *ctx = mt_f32(st, "ctx", nc), *t = mt_f32(st, "t", 1);
    for (int k = 0; k < nshapes && ctx && t; k++) {
        int H = hw[k][0], W = hw[k][1];
        size_t n = (size_t)B * C * H * W;
        char name[32];
        snprintf(name, sizeof name, "x_%d", k);
        float *x = mt_f32(st, name, n);
        snprintf(name, sizeof name, "out_%d", k);
        float *want = mt_f32(st, name, n), *out = ldm_xmalloc(n * sizeof(float));
        size_t bytes = ldm_unet_arena_bytes(m, B, H, W, T);
        CHECK(bytes > 0, "%s %dx%d: arena bytes: %s", tag, H, W, ldm_last_error());
        ldm_arena a;
        CHECK(ldm_arena_init(&a, mt_cpu(), bytes) == 0, "%s", ldm_last_error());
        if (x && want && a.base) {
            int rc = ldm_unet_forward(m, &a, x, t[0], ctx, B, H, W, T, out);
            CHECK(rc == 0, "%s %dx%d: %s", tag, H, W, ldm_last_error());
            CHECK(a.peak == bytes, "%s %dx%d: real peak %zu != measured %zu", tag, H, W, a.peak,
                  bytes);
            double e = rel_l2(out, want, n);
            printf("%s: latent %dx%d rel L2 %.3g (max abs %.3g)\n", tag, H, W, e,
                   mt_max_abs_diff(out, want, n));
            CHECK(rc == 0 && e <= TOL, "%s: latent %dx%d rel L2 %.3g", tag, H, W, e);
        }
        free(x); free(want); free(out);
        ldm_arena_free(&a);
    }
    /* 1x1 (no reference: torch's own output at 1x1 is not reproducible run to run) */
    float x1[2 * 4], o1[2 * 4];
    for (int i = 0; i < 8; i++) x1[i] = (float)(i % 3) - 1.0f;
    size_t bytes = ldm_unet_arena_bytes(m, B, 1, 1, T);
    CHECK(bytes > 0, "%s 1x1: arena bytes: %s", tag, ldm_last_error());
    ldm_arena a;
    if (ctx && bytes && ldm_arena_init(&a, mt_cpu(), bytes) == 0) {
        CHECK(ldm_unet_forward(m, &a, x1, 981.0f, ctx, B, 1, 1, T, o1) == 0, "%s 1x1: %s", tag,
              ldm_last_error());
        int finite = 1;
        for (int i = 0; i < 8; i++) finite &= isfinite(o1[i]);
        CHECK(finite && a.peak == bytes, "%s 1x1: finite %d, peak %zu vs %zu", tag, finite,
              a.peak, bytes);
        ldm_arena_free(&a);
    }
    free(ctx); free(t);
    ldm_unet_free(m);
    ldm_bundle_close(b);
    ldm_st_close(st);
}

/* Copy sd1, set unet/config.json's `field` to `value`; return the folder (static buffer). */
static const char *edited_copy(const char *tmp, const char *field, const char *value) {
    static char dir[512];
    char cfg[600];
    snprintf(dir, sizeof dir, "%s/edit", tmp);
    snprintf(cfg, sizeof cfg, "%s/unet/config.json", dir);
    if (mt_copy("tests/fixtures/models/sd1", dir) || mt_edit_json(cfg, field, value)) return NULL;
    return dir;
}

/* Pack sd1 with unet/config.json's `field` set to `value`: with check != 0 packing itself
 * must fail (ldm_pack loads the UNet on the dry backend), else the bundle is written
 * unchecked and ldm_unet_load must fail.  Either message must contain `must`. */
static void test_refuses(const char *tmp, int check, const char *field, const char *value,
                         const char *must) {
    char bundle[600];
    const char *dir = edited_copy(tmp, field, value);
    CHECK(dir != NULL, "could not prepare the copy for %s", field);
    if (!dir) return;
    snprintf(bundle, sizeof bundle, "%s/edited.ldmb", tmp);
    remove(bundle);
    ldm_pack_opts o = {0};
    o.model_dir = dir;
    o.output = bundle;
    o.no_model_check = !check;
    int rc = ldm_pack(&o);
    if (check) {
        CHECK(rc != 0, "ldm_pack accepted %s = %s", field, value);
        CHECK(rc == 0 || strstr(ldm_last_error(), must) != NULL, "pack message lacks '%s': %s",
              must, ldm_last_error());
        CHECK(!mt_leftovers(tmp, "edited.ldmb"), "%s = %s: output or temporary file left", field, value);
        return;
    }
    CHECK(rc == 0, "pack: %s", ldm_last_error());
    if (rc) return;
    ldm_bundle *b = ldm_bundle_open(bundle);
    CHECK(b != NULL, "%s", ldm_last_error());
    if (!b) return;
    ldm_unet *m = ldm_unet_load(b, mt_dry());
    CHECK(m == NULL, "loader accepted %s = %s", field, value);
    CHECK(m || strstr(ldm_last_error(), must) != NULL, "load message lacks '%s': %s", must,
          ldm_last_error());
    ldm_unet_free(m);
    ldm_bundle_close(b);
}

/* ldm_unet_from_config on the fixture config with one field replaced by `value`. */
static ldm_unet *from_edited(const char *field, const char *value) {
    size_t len;
    char *text = ldm_read_file("tests/fixtures/models/sd1/unet/config.json", &len);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (!j) return NULL;
    json_object_set_new(j, field, json_loads(value, JSON_DECODE_ANY, NULL));
    char *cfg = json_dumps(j, 0);
    json_decref(j);
    ldm_unet *m = ldm_unet_from_config(cfg);
    free(cfg);
    return m;
}

/* The limits at their edges, on the weightless model (no packing: fast). */
static void test_limits(void) {
    ldm_unet *m = from_edited("layers_per_block", "64");
    CHECK(m != NULL, "64 layers: %s", ldm_last_error());
    ldm_unet_free(m);
    m = from_edited("layers_per_block", "65");
    CHECK(m == NULL && strstr(ldm_last_error(), "\"layers_per_block\" = 65"), "65 layers: %s", ldm_last_error());
    ldm_unet_free(m);
    m = from_edited("transformer_layers_per_block", "64");
    CHECK(m != NULL, "64 transformer layers: %s", ldm_last_error());
    CHECK(m && ldm_unet_arena_bytes(m, 1, 4, 4, 3) > 0, "arena of 64 transformer layers");
    ldm_unet_free(m);
    m = from_edited("transformer_layers_per_block", "65");
    CHECK(m == NULL && strstr(ldm_last_error(), "up to 64"), "65 transformer layers: %s", ldm_last_error());
    ldm_unet_free(m);
    m = from_edited("sample_size", "1024");
    CHECK(m && ldm_unet_sample_size(m) == 1024, "sample_size 1024: %s", ldm_last_error());
    ldm_unet_free(m);
    m = from_edited("sample_size", "1025");
    CHECK(m == NULL && strstr(ldm_last_error(), "0..1024"), "sample_size 1025: %s", ldm_last_error());
    ldm_unet_free(m);
    m = from_edited("block_out_channels", "[16384, 16384]");
    CHECK(m != NULL, "16384 channels: %s", ldm_last_error());
    ldm_unet_free(m);
    m = from_edited("block_out_channels", "[16385, 16384]");
    CHECK(m == NULL && strstr(ldm_last_error(), "block_out_channels"), "16385 channels: %s", ldm_last_error());
    ldm_unet_free(m);
}

/* The SD 1.5 UNet's config (diffusers runwayml/stable-diffusion-v1-5) without weights. */
static void test_sd15_arena(void) {
    const char *cfg =
        "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", "
        "\"attention_head_dim\": 8, \"block_out_channels\": [320, 640, 1280, 1280], "
        "\"center_input_sample\": false, \"cross_attention_dim\": 768, "
        "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", "
        "\"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1, "
        "\"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, "
        "\"layers_per_block\": 2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, "
        "\"norm_num_groups\": 32, \"out_channels\": 4, \"sample_size\": 64, "
        "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", "
        "\"CrossAttnUpBlock2D\"]}";
    ldm_unet *m = ldm_unet_from_config(cfg);
    CHECK(m != NULL, "%s", ldm_last_error());
    if (!m) return;
    CHECK(ldm_unet_context_dim(m) == 768, "ctx dim %d", ldm_unet_context_dim(m));
    size_t b64 = ldm_unet_arena_bytes(m, 2, 64, 64, 77), b96 = ldm_unet_arena_bytes(m, 2, 96, 96, 77);
    printf("SD 1.5 UNet arena, B=2 T=77: 64x64 latents %.1f MiB, 96x96 %.1f MiB\n",
           b64 / 1048576.0, b96 / 1048576.0);
    /* one [2,320,64,64] activation is 10 MiB; the whole pass stays within ~16 of them */
    CHECK(b64 > 30u << 20 && b64 < 200u << 20, "64x64 arena %zu bytes", b64);
    CHECK(b96 > b64, "96x96 arena %zu <= 64x64 %zu", b96, b64);
    /* 480x512 pixels: 60 -> 30 -> 15 -> 8 going down, resized back up */
    size_t b60 = ldm_unet_arena_bytes(m, 2, 60, 64, 77);
    CHECK(b60 > 0 && b60 < b64, "60x64 arena %zu (64x64: %zu): %s", b60, b64, ldm_last_error());
    CHECK(ldm_unet_arena_bytes(m, 2, 0, 64, 77) == 0, "0x64 accepted");
    ldm_unet_free(m);
}

int main(void) {
    const char *tmp = mt_tmpdir();
    char sd1[600], sd2[600], log[8192];
    snprintf(sd1, sizeof sd1, "%s/sd1.ldmb", tmp);
    snprintf(sd2, sizeof sd2, "%s/sd2.ldmb", tmp);
    int rc1 = mt_pack("tests/fixtures/models/sd1", sd1, log, sizeof log);
    CHECK(rc1 == 0, "ldmpack sd1: %s", log);
    int rc2 = mt_pack("tests/fixtures/models/sd2", sd2, log, sizeof log);
    CHECK(rc2 == 0, "ldmpack sd2: %s", log);
    if (!rc1) test_fixture("sd1", "expected", sd1, 32);
    if (!rc2) test_fixture("sd2", "expected", sd2, 24);
    /* the folder diffusers 0.42 / transformers 5 wrote (expected_tf5/) */
    char tf5[600];
    snprintf(tf5, sizeof tf5, "%s/sd1_tf5.ldmb", tmp);
    int rc3 = mt_pack("tests/fixtures/models/sd1_tf5", tf5, log, sizeof log);
    CHECK(rc3 == 0, "ldmpack sd1_tf5: %s", log);
    if (!rc3) test_fixture("sd1_tf5", "expected_tf5", tf5, 32);
    static const int odd1[][2] = {{9, 9}, {5, 7}, {8, 3}};   /* 2 levels: up factor 2 */
    static const int odd2[][2] = {{9, 9}, {10, 6}, {8, 6}};  /* 3 levels: up factor 4 */
    if (!rc1) test_odd("sd1", sd1, 32, 3, odd1);
    if (!rc2) test_odd("sd2", sd2, 24, 3, odd2);

    /* unsupported configs are refused when packing, naming the field and value */
    test_refuses(tmp, 1, "down_block_types", "[\"SimpleCrossAttnDownBlock2D\", \"DownBlock2D\"]",
                 "\"down_block_types\": block type \"SimpleCrossAttnDownBlock2D\"");
    test_refuses(tmp, 1, "dual_cross_attention", "true", "\"dual_cross_attention\" = true");
    test_refuses(tmp, 1, "mid_block_type", "\"UNetMidBlock2DSimpleCrossAttn\"",
                 "\"mid_block_type\" = \"UNetMidBlock2DSimpleCrossAttn\"");
    test_refuses(tmp, 1, "time_cond_proj_dim", "256", "\"time_cond_proj_dim\" = 256");
    test_refuses(tmp, 1, "resnet_time_scale_shift", "\"scale_shift\"",
                 "\"resnet_time_scale_shift\" = \"scale_shift\"");
    test_refuses(tmp, 1, "layers_per_block", "[2, 2, 2]", "layers_per_block");
    /* ... and by the loader itself */
    test_refuses(tmp, 0, "dual_cross_attention", "true", "dual_cross_attention");
    test_refuses(tmp, 0, "conv_in_kernel", "1", "\"conv_in_kernel\" = 1");
    test_refuses(tmp, 0, "class_embed_type", "\"timestep\"", "class_embed_type");
    test_refuses(tmp, 0, "norm_num_groups", "null", "norm_num_groups");
    test_refuses(tmp, 0, "up_block_types", "[\"UpBlock2D\", \"AttnUpBlock2D\"]", "AttnUpBlock2D");
    test_refuses(tmp, 0, "attention_type", "\"gated\"", "attention_type");
    /* a config that changes a weight's shape: the error names the tensor */
    test_refuses(tmp, 0, "cross_attention_dim", "48",
                 "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    test_refuses(tmp, 0, "use_linear_projection", "true",
                 "unet.down_blocks.0.attentions.0.proj_in.weight");

    /* counts beyond core/limits.h are refused where they are read, naming the field: they
     * used to allocate hundreds of GB (abort "out of memory", OUT.tmp.PID left behind) or
     * overflow an int (UBSan) and then blame time_embedding_dim */
    test_refuses(tmp, 1, "layers_per_block", "2147483647",
                 "\"layers_per_block\" = 2147483647 is not supported (expected positive integers up to 64)");
    test_refuses(tmp, 1, "transformer_layers_per_block", "2147483647",
                 "\"transformer_layers_per_block\" = 2147483647");
    test_refuses(tmp, 1, "block_out_channels", "[1000000000, 1000000000]",
                 "\"block_out_channels\" = [1000000000,1000000000] is not supported");
    test_refuses(tmp, 1, "sample_size", "1000000000", "\"sample_size\" = 1000000000");
    test_refuses(tmp, 1, "layers_per_block", "1e9", "\"layers_per_block\"");
    test_refuses(tmp, 1, "cross_attention_dim", "2147483647", "\"cross_attention_dim\"");
    test_refuses(tmp, 1, "time_embedding_dim", "2147483647", "\"time_embedding_dim\"");
    test_refuses(tmp, 1, "attention_head_dim", "[2147483647, 8]", "\"attention_head_dim\"");
    test_limits();

    test_sd15_arena();
    mt_cleanup();
    TEST_END();
}
