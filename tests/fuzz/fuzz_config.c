/* fuzz_config.c - libFuzzer harness for the model config readers (model/unet.c, clip.c,
 * vae.c, config.c) and the scheduler config reader (pipeline/scheduler.c).
 *
 * The input is config.json text.  It is read by all four readers: ldm_unet_from_config,
 * ldm_clip_from_config and ldm_vae_from_config (the loaders' config parsing and model
 * building, weightless, on the dry backend), then ldm_sched_config_parse.  A model that
 * builds is sized by a dry forward pass (arena bytes) at a small shape; a scheduler that
 * parses is created for 1..50 steps and run through every step on a tiny latent.
 */
#include "fuzz_util.h"
#include "backend/ops.h"
#include "core/rng.h"
#include "model/model.h"
#include "pipeline/scheduler.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    return 0;
}

static void run_scheduler(const char *text, size_t size) {
    ldm_sched_config c;
    if (ldm_sched_config_parse(&c, text, "scheduler/scheduler_config.json", -1) != 0) return;
    ldm_sched *s = ldm_sched_new(&c, 1 + (int)(size % 50));
    if (!s) return;
    float x[8], out[8], eps[8];
    ldm_rng rng[2];
    ldm_rng_seed(&rng[0], 1);
    ldm_rng_seed(&rng[1], 2);
    for (int k = 0; k < 8; k++) x[k] = (float)(k - 4) * 0.25f;
    for (int i = 0; i < s->n_timesteps; i++) {
        ldm_sched_scale_model_input(s, i, out, x, 8);
        for (int k = 0; k < 8; k++) eps[k] = out[k] * 0.5f - 0.1f;
        if (ldm_sched_step(s, i, eps, x, 2, 4, rng) != 0) break;
    }
    ldm_sched_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_str(data, size);
    ldm_unet *u = ldm_unet_from_config(text);
    if (u) {
        (void)ldm_unet_arena_bytes(u, 1, 4, 6, 3);
        ldm_unet_free(u);
    }
    ldm_clip *c = ldm_clip_from_config(text);
    if (c) {
        (void)ldm_clip_arena_bytes(c, 1);
        ldm_clip_free(c);
    }
    ldm_vae *v = ldm_vae_from_config(text);
    if (v) {
        (void)ldm_vae_arena_bytes(v, 1, 2, 3);
        ldm_vae_free(v);
    }
    run_scheduler(text, size);
    free(text);
    return 0;
}
