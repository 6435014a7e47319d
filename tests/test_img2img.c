/* test_img2img.c - image to image against diffusers' StableDiffusionImg2ImgPipeline
 * (tests/gen_img2img.py; diffusers 0.42, PyPI torch): the image processor (PNG read, the
 * rounding of the size, PIL's Lanczos resize, scaling to [-1, 1]) exactly; the VAE
 * encoder's distribution (rel. L2 <= 1e-4); full runs at several strengths and
 * schedulers, the ancestral one included (latents rel. L2 <= 1e-4, image <= 2 levels max,
 * <= 0.5 mean, as text to image); and the refusals. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "model_test_util.h"

#include "core/common.h"
#include "format/image.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "pipeline/imageproc.h"
#include "pipeline/pipeline.h"
#include "pipeline/scheduler.h"

#define EXP "tests/fixtures/expected_img2img/"
#define IMG "tests/fixtures/img/"

static ldm_pipeline *open_sd1(void) {
    char bundle[512], log[4096];
    snprintf(bundle, sizeof bundle, "%s/sd1.ldmb", mt_tmpdir());
    int rc = mt_pack("tests/fixtures/models/sd1", bundle, log, sizeof log);
    CHECK(rc == 0, "ldmpack sd1: %s", log);
    ldm_pipeline *p = rc ? NULL : ldm_pipeline_open(bundle, mt_cpu());
    CHECK(p != NULL, "open: %s", ldm_last_error());
    return p;
}

/* ldm's preprocessing of a fixture picture equals the image processor's, bit for bit. */
static float *check_preprocess(const char *png, const char *exp_file, int want_w, int want_h) {
    uint8_t *rgb = NULL;
    int w, h, ow, oh;
    char path[256];
    snprintf(path, sizeof path, IMG "%s", png);
    CHECK(ldm_image_read(path, &rgb, &w, &h) == 0, "read %s: %s", png, ldm_last_error());
    if (!rgb) return NULL;
    float *x = NULL;
    CHECK(ldm_image_preprocess(rgb, w, h, 0, 0, 8, &x, &ow, &oh) == 0, "preprocess %s", png);
    free(rgb);
    snprintf(path, sizeof path, EXP "%s", exp_file);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "%s: %s", path, ldm_last_error());
    float *ref = st ? mt_f32(st, "image", (size_t)3 * want_w * want_h) : NULL;
    CHECK(ow == want_w && oh == want_h, "%s: size %dx%d, diffusers %dx%d", png, ow, oh, want_w, want_h);
    if (ref && x && ow == want_w && oh == want_h) {
        double d = mt_max_abs_diff(x, ref, (size_t)3 * ow * oh);
        CHECK(d == 0, "%s: preprocessed image differs from diffusers' by up to %g", png, d);
    }
    free(ref);
    if (st) ldm_st_close(st);
    return x;
}

static void check_encoder(ldm_pipeline *p, const float *x) {
    ldm_safetensors *st = ldm_st_open(EXP "vae_encode.safetensors");
    if (!st) { CHECK(0, "vae_encode.safetensors: %s", ldm_last_error()); return; }
    const size_t n = 4 * 8 * 8;
    float *mean = mt_f32(st, "mean", n), *logvar = mt_f32(st, "logvar", n);
    /* the bundle's VAE through the model API: its own arena */
    ldm_bundle *b = ldm_bundle_open(ldm_bundle_path(ldm_pipeline_bundle(p)));
    ldm_vae *v = b ? ldm_vae_load(b, mt_cpu()) : NULL;
    CHECK(v && ldm_vae_has_encoder(v), "vae with encoder: %s", ldm_last_error());
    if (v && mean && logvar) {
        ldm_arena a;
        CHECK(ldm_arena_init(&a, mt_cpu(), ldm_vae_encode_arena_bytes(v, 64, 64)) == 0, "arena");
        float mom[2 * 4 * 8 * 8];
        CHECK(ldm_vae_encode(v, &a, x, 64, 64, mom) == 0, "encode: %s", ldm_last_error());
        double em = rel_l2(mom, mean, n), el = rel_l2(mom + n, logvar, n);
        printf("PASS vae encode: mean rel L2 %.2e, logvar %.2e\n", em, el);
        CHECK(em <= 1e-4 && el <= 1e-4, "encoder: mean rel L2 %.3g, logvar %.3g (bound 1e-4)", em, el);
        CHECK(ldm_vae_encode(v, &a, x, 60, 64, mom) == -1, "a size not a multiple of 8 is refused");
        ldm_arena_free(&a);
    }
    ldm_vae_free(v);
    ldm_bundle_close(b);
    free(mean);
    free(logvar);
    ldm_st_close(st);
}

static void check_runs(ldm_pipeline *p, const float *x) {
    json_error_t je;
    json_t *index = json_load_file(EXP "index.json", 0, &je);
    CHECK(index != NULL, "index.json: %s", je.text);
    if (!index) return;
    const char *fname;
    json_t *v;
    int runs = 0;
    json_object_foreach(json_object_get(index, "files"), fname, v) {
        if (!json_is_object(v)) continue;
        runs++;
        const char *sched = json_string_value(json_object_get(v, "scheduler"));
        ldm_gen_params g = ldm_gen_params_default();
        g.prompt = json_string_value(json_object_get(index, "prompt"));
        g.steps = (int)json_integer_value(json_object_get(index, "steps"));
        g.guidance = json_number_value(json_object_get(index, "guidance"));
        g.seed = (uint64_t)json_integer_value(json_object_get(index, "seed"));
        g.scheduler = ldm_sched_kind_from_name(sched);
        g.strength = json_number_value(json_object_get(v, "strength"));
        g.init_image = x;
        g.width = g.height = 64;
        ldm_gen_result r;
        ldm_status rc = ldm_generate(p, &g, &r);
        CHECK(rc == LDM_OK, "%s: %s", fname, ldm_last_error());
        if (rc) continue;
        int evals = (int)json_integer_value(json_object_get(v, "unet_evaluations"));
        CHECK(r.unet_evaluations == evals, "%s: %d UNet evaluations, diffusers %d", fname,
              r.unet_evaluations, evals);
        char path[256];
        snprintf(path, sizeof path, EXP "%s", fname);
        ldm_safetensors *st = ldm_st_open(path);
        const ldm_st_tensor *ti = st ? ldm_st_find(st, "image") : NULL;
        const size_t ni = 64 * 64 * 3;
        CHECK(ti && ti->dtype == LDM_ST_U8 && (size_t)ti->numel == ni, "%s: image missing", fname);
        if (ti && (size_t)ti->numel == ni) {
            const uint8_t *ref = ti->data;
            double mean;
            const int maxd = mt_u8_diff(r.rgb, ref, ni, &mean);
            printf("PASS %-30s image max %d mean %.4f levels\n", fname, maxd, mean);
            CHECK(maxd <= 2 && mean <= 0.5, "%s: image max %d mean %.3f levels (bounds 2, 0.5)",
                  fname, maxd, mean);
        }
        if (st) ldm_st_close(st);
        ldm_gen_result_free(&r);
    }
    CHECK(runs >= 6, "%d runs in index.json", runs);
    json_decref(index);

    /* refusals: strength out of range, or too small to run a step */
    ldm_gen_params g = ldm_gen_params_default();
    g.prompt = "x";
    g.steps = 4;
    g.init_image = x;
    g.width = g.height = 64;
    ldm_gen_result r;
    g.strength = 0;
    CHECK(ldm_generate(p, &g, &r) == LDM_USAGE && strstr(ldm_last_error(), "strength"), "strength 0: %s", ldm_last_error());
    g.strength = 1.5;
    CHECK(ldm_generate(p, &g, &r) == LDM_USAGE && strstr(ldm_last_error(), "strength"), "strength 1.5: %s", ldm_last_error());
    g.strength = 0.2;   /* int(4 * 0.2) = 0: DDIM runs no step (PNDM would run its extra one) */
    g.scheduler = LDM_SCHED_DDIM;
    CHECK(ldm_generate(p, &g, &r) == LDM_USAGE && strstr(ldm_last_error(), "no denoising step"),
          "strength too small for the steps: %s", ldm_last_error());
}

int main(void) {
    float *x = check_preprocess("init64.png", "vae_encode.safetensors", 64, 64);
    float *xo = check_preprocess("init70x61.png", "preprocess_70x61.safetensors", 64, 56);
    free(xo);
    xo = check_preprocess("init64.jpg", "preprocess_jpeg.safetensors", 64, 64);
    free(xo);
    /* grey and RGBA pictures read as RGB (alpha composited on white) */
    uint8_t *rgb = NULL;
    int w, h;
    CHECK(ldm_image_read(IMG "init64_gray.png", &rgb, &w, &h) == 0 && w == 64 &&
          rgb[0] == rgb[1] && rgb[1] == rgb[2], "grey PNG as RGB: %s", ldm_last_error());
    free(rgb);
    rgb = NULL;
    CHECK(ldm_image_read(IMG "init64_rgba.png", &rgb, &w, &h) == 0 && w == 64, "RGBA PNG: %s", ldm_last_error());
    /* pixel (0, 0) is (128, 255, 40) with alpha 2: c*a/255 + 255*(1 - a/255), rounded */
    CHECK(rgb && rgb[0] == 254 && rgb[1] == 255 && rgb[2] == 253, "alpha composited on white: %d %d %d",
          rgb ? rgb[0] : -1, rgb ? rgb[1] : -1, rgb ? rgb[2] : -1);
    free(rgb);
    CHECK(ldm_image_read("tests/fixtures/img/none.png", &rgb, &w, &h) == -1 && strstr(ldm_last_error(), "none.png"),
          "missing file named");
    CHECK(ldm_image_read("tests/fixtures/expected_img2img/index.json", &rgb, &w, &h) == -1 &&
          ldm_last_status() == LDM_DATA && strstr(ldm_last_error(), "not a PNG or JPEG"), "not an image: %s", ldm_last_error());
    ldm_pipeline *p = open_sd1();
    if (p && x) {
        check_encoder(p, x);
        check_runs(p, x);
    }
    ldm_pipeline_close(p);
    free(x);
    mt_cleanup();
    TEST_END();
}
