/* test_vae.c - the VAE decoder against diffusers (tests/fixtures/expected/
 * {sd1,sd2}_vae.safetensors, and expected_tf5/sd1_tf5_vae.safetensors for the folder
 * diffusers 0.42 wrote): z [1,4,8,8] -> img [1,3,64,64]; a batch of two; a
 * non-square latent; checkpoints with the older attention names (query/key/value/
 * proj_attn); and loader errors for broken configs that must name the field or tensor.
 */
#include <string.h>

#include "test.h"
#include "model_test_util.h"

#include "format/bundle.h"
#include "model/model.h"
#include "backend/ops.h"

#define TOL mt_tol(1e-4) /* see model_test_util.h */

static ldm_vae *open_vae(const char *bundle_path, ldm_bundle **pb) {
    *pb = ldm_bundle_open(bundle_path);
    CHECK(*pb != NULL, "%s", ldm_last_error());
    if (!*pb) return NULL;
    ldm_vae *m = ldm_vae_load(*pb, mt_cpu());
    CHECK(m != NULL, "%s: %s", bundle_path, ldm_last_error());
    return m;
}

/* Decode the fixture's z with the bundle's VAE; returns the rel L2 error (or 1e9). */
static double decode_vs_expected(const char *tag, const char *bundle_path, int batch_test) {
    char path[256];
    double err = 1e9;
    snprintf(path, sizeof path, "tests/fixtures/%s/%s_vae.safetensors",
             strstr(tag, "_tf5") ? "expected_tf5" : "expected", tag);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "%s", ldm_last_error());
    ldm_bundle *b = NULL;
    ldm_vae *m = st ? open_vae(bundle_path, &b) : NULL;
    if (!m) { ldm_st_close(st); ldm_bundle_close(b); return err; }

    const int h = 8, w = 8, f = ldm_vae_downscale(m), Z = ldm_vae_latent_channels(m);
    CHECK(f == 8 && Z == 4, "downscale %d latent channels %d", f, Z);
    CHECK(fabsf(ldm_vae_scaling_factor(m) - 0.18215f) < 1e-7f, "scaling %g",
          ldm_vae_scaling_factor(m));
    const size_t zn = (size_t)Z * h * w, n = (size_t)3 * h * f * w * f;
    float *z = mt_f32(st, "z", zn), *want = mt_f32(st, "img", n);
    float *img = ldm_xmalloc(2 * n * sizeof(float)), *z2 = ldm_xmalloc(2 * zn * sizeof(float));
    const int B = batch_test ? 2 : 1;
    size_t bytes = ldm_vae_arena_bytes(m, B, h, w);
    CHECK(bytes > 0 && bytes == ldm_vae_arena_bytes(m, 1, h, w), "arena bytes %zu", bytes);
    ldm_arena a;
    CHECK(ldm_arena_init(&a, mt_cpu(), bytes) == 0, "%s", ldm_last_error());
    if (z && want) {
        CHECK(ldm_vae_decode(m, &a, z, 1, h, w, img) == 0, "%s", ldm_last_error());
        CHECK(a.used == 0, "arena not reset: %zu", a.used);
        err = rel_l2(img, want, n);
        CHECK(err <= TOL, "%s: VAE decode rel L2 %.3g (max abs %.3g)", tag, err,
              mt_max_abs_diff(img, want, n));
        if (batch_test) {
            /* batch of two: [-z, z]; the second image must equal the single decode */
            for (size_t i = 0; i < zn; i++) z2[i] = -z[i], z2[zn + i] = z[i];
            CHECK(ldm_vae_decode(m, &a, z2, 2, h, w, img) == 0, "%s", ldm_last_error());
            CHECK(rel_l2(img + n, want, n) <= TOL, "batch[1] rel L2 %.3g",
                  rel_l2(img + n, want, n));
            CHECK(rel_l2(img, want, n) > 1e-2, "batch[0] should differ from z's image");
        }
    }
    free(z); free(want); free(img); free(z2);
    ldm_arena_free(&a);
    ldm_vae_free(m);
    ldm_bundle_close(b);
    ldm_st_close(st);
    return err;
}

/* Any latent size: 3x5 latent -> 24x40 image, finite values, arena exactly sized. */
static void test_odd_size(const char *bundle_path) {
    ldm_bundle *b;
    ldm_vae *m = open_vae(bundle_path, &b);
    if (!m) { ldm_bundle_close(b); return; }
    const int h = 3, w = 5, Z = 4, f = ldm_vae_downscale(m);
    const size_t zn = (size_t)Z * h * w, n = (size_t)3 * h * f * w * f;
    float *z = ldm_xmalloc(zn * sizeof(float)), *img = ldm_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < zn; i++) z[i] = sinf((float)i * 0.7f) * 5.0f;
    ldm_arena a;
    CHECK(ldm_arena_init(&a, mt_cpu(), ldm_vae_arena_bytes(m, 1, h, w)) == 0, "%s",
          ldm_last_error());
    CHECK(ldm_vae_decode(m, &a, z, 1, h, w, img) == 0, "%s", ldm_last_error());
    int finite = 1;
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(img[i])) finite = 0;
        if (fabs(img[i]) > mx) mx = fabs(img[i]);
    }
    CHECK(finite && mx > 1e-3 && mx < 100, "odd-size decode: finite %d max |x| %g", finite, mx);
    CHECK(ldm_vae_decode(m, &a, z, 1, 0, w, img) != 0, "h = 0 accepted");
    free(z); free(img);
    ldm_arena_free(&a);
    ldm_vae_free(m);
    ldm_bundle_close(b);
}

/* Rewrite a safetensors file's header, renaming the VAE attention weights to the names
 * older diffusers versions wrote (to_q -> query, to_k -> key, to_v -> value,
 * to_out.0 -> proj_attn). */
static int rename_to_old_attention(const char *path) {
    size_t len;
    char *buf = ldm_read_file(path, &len);
    if (!buf || len < 8) return -1;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)buf[i] << (8 * i);
    json_error_t e;
    json_t *hdr = json_loadb(buf + 8, hlen, 0, &e), *out = json_object();
    if (!hdr) { free(buf); json_decref(out); return -1; }
    static const char *from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    const char *key;
    json_t *val;
    json_object_foreach(hdr, key, val) {
        char name[512];
        snprintf(name, sizeof name, "%s", key);
        for (int r = 0; r < 4; r++) {
            char *p = strstr(name, from[r]);
            if (p && strstr(name, "attentions.0")) {
                char tail[512];
                snprintf(tail, sizeof tail, "%s", p + strlen(from[r]));
                sprintf(p, "%s%s", to[r], tail);
            }
        }
        json_object_set(out, name, val);
    }
    char *text = json_dumps(out, JSON_COMPACT);
    size_t tl = strlen(text), padded = (tl + 7) & ~(size_t)7;
    size_t nlen = 8 + padded + (len - 8 - hlen);
    char *nb = ldm_xmalloc(nlen);
    for (int i = 0; i < 8; i++) nb[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(nb + 8, text, tl);
    memset(nb + 8 + tl, ' ', padded - tl);
    memcpy(nb + 8 + padded, buf + 8 + hlen, len - 8 - hlen);
    int rc = ldm_write_file_atomic(path, nb, nlen);
    free(text); free(nb); free(buf);
    json_decref(hdr); json_decref(out);
    return rc;
}

static void test_old_attention_names(const char *tmp) {
    char dir[512], st[600], bundle[600], log[4096];
    snprintf(dir, sizeof dir, "%s/old", tmp);
    snprintf(st, sizeof st, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    snprintf(bundle, sizeof bundle, "%s/old.ldmb", tmp);
    if (mt_copy("tests/fixtures/models/sd1", dir) || rename_to_old_attention(st)) {
        CHECK(0, "could not prepare the old-names copy");
        return;
    }
    int rc = mt_pack(dir, bundle, log, sizeof log);
    CHECK(rc == 0, "packing old attention names: %s", log);
    if (rc) return;
    ldm_bundle *b = ldm_bundle_open(bundle);
    CHECK(b && ldm_bundle_tensor(b, "vae.decoder.mid_block.attentions.0.query.weight"),
          "renamed tensor missing from the bundle");
    ldm_bundle_close(b);
    double e = decode_vs_expected("sd1", bundle, 0);
    printf("sd1 with old attention names: rel L2 %.3g\n", e);
}

/* ldm_vae_from_config: the weightless decoder (dry backend) of the config text alone. */
static void test_from_config(void) {
    size_t len;
    char *cfg = ldm_read_file("tests/fixtures/models/sd1/vae/config.json", &len);
    ldm_vae *m = cfg ? ldm_vae_from_config(cfg) : NULL;
    CHECK(m && ldm_vae_downscale(m) == 8 && ldm_vae_latent_channels(m) == 4, "from config: %s",
          ldm_last_error());
    CHECK(m && ldm_vae_arena_bytes(m, 1, 8, 8) > 0, "arena bytes");
    ldm_vae_free(m);
    free(cfg);
    m = ldm_vae_from_config("{\"latent_channels\": 4, \"out_channels\": 3, \"block_out_channels\": [8], "
                            "\"layers_per_block\": 2147483647, \"norm_num_groups\": 4, "
                            "\"up_block_types\": [\"UpDecoderBlock2D\"]}");
    CHECK(!m && strstr(ldm_last_error(), "vae/config.json: field \"layers_per_block\""),
          "2^31 - 1 layers: %s", ldm_last_error());
    ldm_vae_free(m);
}

static int load_vae(const ldm_bundle *b) {
    ldm_vae *m = ldm_vae_load(b, mt_cpu());
    ldm_vae_free(m);
    return m != NULL;
}

/* One vae/config.json field changed: the error must name it (see mt_expect_config_error). */
static void expect_config_error(const char *tmp, const char *field, const char *value,
                                const char *needle) {
    mt_expect_config_error(tmp, "vae/config.json", load_vae, field, value, needle);
}

int main(void) {
    const char *tmp = mt_tmpdir();
    char log[4096];
    const char *tags[3] = {"sd1", "sd2", "sd1_tf5"};
    for (int k = 0; k < 3; k++) {
        char folder[256], bundle[512];
        snprintf(folder, sizeof folder, "tests/fixtures/models/%s", tags[k]);
        snprintf(bundle, sizeof bundle, "%s/%s.ldmb", tmp, tags[k]);
        int rc = mt_pack(folder, bundle, log, sizeof log);
        CHECK(rc == 0, "packing %s failed: %s", folder, log);
        if (rc) continue;
        double e = decode_vs_expected(tags[k], bundle, 1);
        printf("%s: VAE decode rel L2 %.3g\n", tags[k], e);
        if (k == 0) test_odd_size(bundle);
        ldm_bundle *b = ldm_bundle_open(bundle);
        ldm_vae *m = b ? ldm_vae_load(b, mt_dry()) : NULL;
        CHECK(m != NULL, "dry load: %s", ldm_last_error());
        ldm_vae_free(m);
        ldm_bundle_close(b);
    }
    test_old_attention_names(tmp);

    expect_config_error(tmp, "up_block_types",
                        "[\"UpDecoderBlock2D\", \"AttnUpDecoderBlock2D\", \"UpDecoderBlock2D\", "
                        "\"UpDecoderBlock2D\"]", "up_block_types[1]");
    expect_config_error(tmp, "layers_per_block", NULL, "layers_per_block");
    expect_config_error(tmp, "latent_channels", "\"4\"", "latent_channels");
    expect_config_error(tmp, "act_fn", "\"gelu\"", "act_fn");
    expect_config_error(tmp, "norm_num_groups", "3", "norm_num_groups");
    expect_config_error(tmp, "up_block_types", "[\"UpDecoderBlock2D\"]", "up_block_types");
    /* config and weights disagree: conv_in must be [32, 4, 3, 3] but is [16, 4, 3, 3] */
    expect_config_error(tmp, "block_out_channels", "[8, 16, 16, 32]",
                        "vae.decoder.conv_in.weight");
    /* more resnets per block than the checkpoint has */
    expect_config_error(tmp, "layers_per_block", "2", "vae.decoder.up_blocks.0.resnets.2.");
    /* counts beyond core/limits.h: refused naming the field, before any allocation */
    expect_config_error(tmp, "layers_per_block", "2147483647",
                        "field \"layers_per_block\": 2147483647 is out of range (expected 0..64)");
    expect_config_error(tmp, "block_out_channels", "[1e9, 1e9, 1e9, 1e9]",
                        "field \"block_out_channels[0]\": 1000000000 is out of range");
    expect_config_error(tmp, "latent_channels", "100000", "latent_channels");
    expect_config_error(tmp, "norm_num_groups", "2147483647", "norm_num_groups");
    test_from_config();

    mt_cleanup();
    TEST_END();
}
