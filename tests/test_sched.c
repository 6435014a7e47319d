/* test_sched.c - the samplers against diffusers 0.25.1.
 *
 * 1. Synthetic loops: each scheduler runs with a made-up model, eps = 0.5 * x_in + c
 *    (c = torch.randn(64) from seed 7), on B = 2 samples of 64 values drawn from
 *    generators seeded 42 and 43 (the ancestral ones draw their noise from them too).
 *    The golden values below come from diffusers with the same inputs:
 *
 *      s = Class.from_config(tests/fixtures/models/M/scheduler/scheduler_config.json, **over)
 *      s.set_timesteps(steps); gens = [torch.Generator().manual_seed(42 + b) for b in (0, 1)]
 *      x = randn_tensor((2, 64), generator=gens) * s.init_noise_sigma
 *      for t in s.timesteps: x = s.step(s.scale_model_input(x, t) * 0.5 + c, t, x,
 *                                        [eta=eta,] [generator=gens]).prev_sample
 *
 *    All but DPM++ agree bit for bit; DPM++ differs in the last bits because torch's
 *    log/exp (Sleef) are not libm's, so it gets a relative bound of 2e-6.
 * 2. The fixture runs (tests/fixtures/expected/index.json): timesteps, sigmas and
 *    init_noise_sigma of every run's scheduler, and latents_init equal to our generator.
 * 3. Configuration: from_config semantics, refused values named, names.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"
#include "format/safetensors.h"
#include "pipeline/scheduler.h"
#include "test.h"

#define EXP "tests/fixtures/expected/"

static char *sched_json(const char *model) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/models/%s/scheduler/scheduler_config.json", model);
    char *s = ldm_read_file(path, NULL);
    if (!s) { printf("FAIL cannot read %s: %s\n", path, ldm_last_error()); exit(1); }
    return s;
}

/* ---------------------------------------------------------------------------------- */
/* 1. synthetic loops */

typedef struct {
    const char *model, *kind;
    int steps, karras;
    const char *spacing;
    double eta;
    int prk, n_timesteps, exact;
    double head[8];     /* x[0][0..3], x[1][0..3] after the last step */
    double sum;
} golden_case;

static const golden_case goldens[] = {
    {"sd1", "pndm", 20, 0, NULL, 0.0, 0, 21, 1, {0x1.f9cba60000000p+2, 0x1.f0b0d00000000p+0, -0x1.7dbd660000000p+0, 0x1.34b2060000000p-1, 0x1.a375580000000p+1, -0x1.5b01300000000p+1, 0x1.577c580000000p+0, 0x1.c500d60000000p+2}, 63.149747624993324},
    {"sd1", "ddim", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.0bda060000000p+3, 0x1.0118d40000000p+1, -0x1.a31aca0000000p+0, 0x1.7ba86a0000000p-1, 0x1.c1083a0000000p+1, -0x1.70a8c20000000p+1, 0x1.5729040000000p+0, 0x1.e309ee0000000p+2}, 67.652845613658428},
    {"sd1", "ddim", 20, 0, NULL, 0.5, 0, 20, 1, {0x1.0c39f80000000p+3, 0x1.331f300000000p+0, -0x1.8037360000000p+0, 0x1.f926460000000p-1, 0x1.d3b7320000000p+1, -0x1.7fceca0000000p+1, -0x1.2ffa7a0000000p+0, 0x1.fb45cc0000000p+2}, 72.329456685110927},
    {"sd1", "ddpm", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.42d15a0000000p+2, -0x1.981a1c0000000p-1, -0x1.30cb700000000p+1, 0x1.a007ee0000000p+1, 0x1.bbd5b80000000p+1, -0x1.55ce300000000p+1, -0x1.a6f0da0000000p+1, 0x1.d4d0660000000p+2}, 68.483003027737141},
    {"sd1", "euler", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.08cea80000000p+3, 0x1.f7e6120000000p+0, -0x1.a3e3920000000p+0, 0x1.8b1c960000000p-1, 0x1.bdb7d80000000p+1, -0x1.6ce5260000000p+1, 0x1.4b85220000000p+0, 0x1.dec46e0000000p+2}, 67.172347739338875},
    {"sd1", "euler_a", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.42d1580000000p+2, -0x1.981a060000000p-1, -0x1.30cb660000000p+1, 0x1.a007e80000000p+1, 0x1.bbd5b20000000p+1, -0x1.55ce260000000p+1, -0x1.a6f0d00000000p+1, 0x1.d4d05e0000000p+2}, 68.482995226979256},
    {"sd1", "dpmpp_2m", 20, 0, NULL, 0.0, 0, 20, 0, {0x1.eefbc40000000p+2, 0x1.ed703c0000000p+0, -0x1.6c66220000000p+0, 0x1.0d62300000000p-1, 0x1.9787ce0000000p+1, -0x1.52e1cc0000000p+1, 0x1.5cf35c0000000p+0, 0x1.b94d8e0000000p+2}, 61.32252598926425},
    {"sd1", "dpmpp_2m", 20, 1, NULL, 0.0, 0, 20, 0, {0x1.23d2f00000000p+3, 0x1.1702d80000000p+1, -0x1.cb58600000000p+0, 0x1.a75e840000000p-1, 0x1.ea19e40000000p+1, -0x1.91dd060000000p+1, 0x1.720fd00000000p+0, 0x1.076f600000000p+3}, 73.849702797830105},
    {"sd1", "euler", 20, 1, NULL, 0.0, 0, 20, 1, {0x1.0af7d60000000p+3, 0x1.fad18a0000000p+0, -0x1.a8cd240000000p+0, 0x1.93a19e0000000p-1, 0x1.c1d5a40000000p+1, -0x1.6ffc9e0000000p+1, 0x1.4c26e80000000p+0, 0x1.e3001a0000000p+2}, 67.797722436487675},
    {"sd1", "ddim", 20, 0, "trailing", 0.0, 0, 20, 1, {0x1.39fdc00000000p+3, 0x1.24ac660000000p+1, -0x1.0081dc0000000p+1, 0x1.0537fc0000000p+0, 0x1.0ab16a0000000p+2, -0x1.b1d4d20000000p+1, 0x1.73fa0c0000000p+0, 0x1.1d820e0000000p+3}, 80.435548037290573},
    {"sd1", "ddim", 20, 0, "linspace", 0.0, 0, 20, 1, {0x1.2b520e0000000p+3, 0x1.2006f60000000p+1, -0x1.d289320000000p+0, 0x1.a1d2200000000p-1, 0x1.f5344a0000000p+1, -0x1.9bd5300000000p+1, 0x1.81ff8c0000000p+0, 0x1.0db2300000000p+3}, 75.507130160927773},
    {"sd1", "euler_a", 7, 0, "trailing", 0.0, 0, 7, 1, {0x1.5d52440000000p+3, 0x1.57c81c0000000p-1, -0x1.5a66a40000000p+1, 0x1.9ce17a0000000p+1, 0x1.37bbce0000000p+2, -0x1.681d860000000p+1, -0x1.02216e0000000p+2, 0x1.0560480000000p+3}, 100.0744851231575},
    {"sd1", "pndm", 10, 0, NULL, 0.0, 1, 19, 1, {0x1.b29a780000000p+2, 0x1.b9e1940000000p+0, -0x1.352f440000000p+0, 0x1.8c567e0000000p-2, 0x1.6258ba0000000p+1, -0x1.28b79a0000000p+1, 0x1.4166660000000p+0, 0x1.811b560000000p+2}, 53.282568231225014},
    {"sd1", "pndm", 1, 0, NULL, 0.0, 0, 1, 1, {0x1.ed0e460000000p+0, 0x1.795dc80000000p+0, 0x1.c4fa000000000p-1, -0x1.09d3f60000000p+1, -0x1.ad64ac0000000p-8, -0x1.e038320000000p-2, 0x1.08ba3e0000000p+1, 0x1.41af4a0000000p-1}, -1.2219788422808051},
    {"sd1", "dpmpp_2m", 7, 0, "linspace", 0.0, 0, 7, 0, {0x1.3007e40000000p+3, 0x1.1bb0e40000000p+1, -0x1.effd080000000p+0, 0x1.f72f040000000p-1, 0x1.021c9c0000000p+2, -0x1.a402fe0000000p+1, 0x1.693a080000000p+0, 0x1.145e600000000p+3}, 77.844896025955677},
    {"sd1", "ddpm", 3, 0, "trailing", 0.0, 0, 3, 1, {0x1.d9981e0000000p+3, 0x1.55003c0000000p+1, -0x1.7f2b920000000p+1, 0x1.38d4d80000000p+2, 0x1.c67ca20000000p+2, -0x1.247ef00000000p+2, -0x1.e424280000000p+1, 0x1.66a7a60000000p+3}, 127.95016361027956},
    {"sd1", "euler", 13, 0, "linspace", 0.0, 0, 13, 1, {0x1.434c5e0000000p+3, 0x1.2637ba0000000p+1, -0x1.10ffe40000000p+1, 0x1.2ca2d40000000p+0, 0x1.1577240000000p+2, -0x1.c00e5e0000000p+1, 0x1.6633900000000p+0, 0x1.27ec6e0000000p+3}, 83.744079697877169},
    {"sd1", "dpmpp_2m", 7, 1, NULL, 0.0, 0, 7, 0, {0x1.eb86d60000000p+2, 0x1.ebcd520000000p+0, -0x1.6799180000000p+0, 0x1.03767e0000000p-1, 0x1.93f4f60000000p+1, -0x1.5057900000000p+1, 0x1.5da9380000000p+0, 0x1.b5b9b40000000p+2}, 60.776974625885487},
    {"sd2", "ddim", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.afaee00000000p+0, 0x1.0bb7f00000000p-2, -0x1.0441420000000p-1, 0x1.dea07a0000000p-2, 0x1.a4cc9c0000000p-1, -0x1.371ccc0000000p-1, 0x1.58852e0000000p-6, 0x1.ad65800000000p+0}, 16.004831983707845},
    {"sd2", "euler", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.af2c860000000p+0, 0x1.f765b80000000p-3, -0x1.0dbc620000000p-1, 0x1.0078500000000p-1, 0x1.aa9dfc0000000p-1, -0x1.383fb40000000p-1, -0x1.735c900000000p-8, 0x1.b130a80000000p+0}, 16.240383004769683},
    {"sd2", "euler_a", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.857c140000000p-3, -0x1.6832000000000p-1, -0x1.bed3e80000000p-1, 0x1.c893ec0000000p+0, 0x1.d6f0660000000p-1, -0x1.1e13b80000000p+0, -0x1.3d17d80000000p+0, 0x1.f1c9ea0000000p+0}, 18.106652988120914},
    {"sd2", "dpmpp_2m", 20, 0, NULL, 0.0, 0, 20, 0, {0x1.dfa9de0000000p+0, 0x1.6f1b040000000p-2, -0x1.eb90680000000p-2, 0x1.792e280000000p-2, 0x1.b792a60000000p-1, -0x1.5306900000000p-1, 0x1.2207760000000p-3, 0x1.ca0e540000000p+0}, 16.655558930709958},
    {"sd2", "pndm", 20, 0, NULL, 0.0, 0, 21, 1, {0x1.b095ea0000000p+0, 0x1.1d2f3c0000000p-2, -0x1.f485f40000000p-2, 0x1.ba14740000000p-2, 0x1.9ee19e0000000p-1, -0x1.3624f80000000p-1, 0x1.97d2520000000p-5, 0x1.a9aa2a0000000p+0}, 15.764369742013514},
    {"sd2", "ddpm", 20, 0, NULL, 0.0, 0, 20, 1, {0x1.857c0e0000000p-3, -0x1.6832040000000p-1, -0x1.bed3e20000000p-1, 0x1.c893f20000000p+0, 0x1.d6f06a0000000p-1, -0x1.1e13c00000000p+0, -0x1.3d17d80000000p+0, 0x1.f1c9f00000000p+0}, 18.106657822616398},
    {"sd2", "ddim", 9, 0, "trailing", 1.0, 0, 9, 1, {0x1.3f8bd20000000p-1, -0x1.58b4100000000p-2, -0x1.408dce0000000p+0, 0x1.ffce780000000p-1, 0x1.155d0a0000000p+0, -0x1.c483460000000p-3, -0x1.71ac3c0000000p-1, 0x1.06e7a80000000p+1}, 19.480581358075142},
};

#define PER 64

static void run_golden(const golden_case *g) {
    char *json = sched_json(g->model);
    if (g->prk) {   /* the same config with skip_prk_steps false */
        char *p = strstr(json, "\"skip_prk_steps\": true");
        if (p) memcpy(p, "\"skip_prk_steps\":false", 22);
    }
    ldm_sched_config c;
    char what[128];
    snprintf(what, sizeof what, "%s %s %d steps%s%s%s eta %g%s", g->model, g->kind, g->steps,
             g->karras ? " karras" : "", g->spacing ? " " : "", g->spacing ? g->spacing : "",
             g->eta, g->prk ? " prk" : "");
    int rc = ldm_sched_config_parse(&c, json, "scheduler_config.json",
                                    ldm_sched_kind_from_name(g->kind));
    free(json);
    CHECK(rc == 0, "%s: parse: %s", what, ldm_last_error());
    if (rc) return;
    if (g->karras) c.use_karras_sigmas = 1;
    if (g->spacing) c.timestep_spacing = ldm_spacing_from_name(g->spacing);
    c.eta = g->eta;
    c.final_sigmas = LDM_FINAL_V025;   /* the goldens are diffusers 0.25.1's */
    ldm_sched *s = ldm_sched_new(&c, g->steps);
    CHECK(s != NULL, "%s: %s", what, ldm_last_error());
    if (!s) return;
    CHECK(s->n_timesteps == g->n_timesteps, "%s: %d timesteps, diffusers %d", what,
          s->n_timesteps, g->n_timesteps);
    ldm_rng rngs[2], rc7;
    float x[2 * PER], xin[2 * PER], mo[2 * PER], cvec[PER];
    ldm_rng_seed(&rc7, 7);
    ldm_rng_randn(&rc7, cvec, PER);
    for (int b = 0; b < 2; b++) {
        ldm_rng_seed(&rngs[b], 42 + b);
        ldm_rng_randn(&rngs[b], x + b * PER, PER);
    }
    for (int k = 0; k < 2 * PER; k++) x[k] = x[k] * s->init_noise_sigma;
    for (int i = 0; i < s->n_timesteps; i++) {
        ldm_sched_scale_model_input(s, i, xin, x, 2 * PER);
        for (int k = 0; k < 2 * PER; k++) mo[k] = xin[k] * 0.5f + cvec[k % PER];
        if (ldm_sched_step(s, i, mo, x, 2, PER, rngs)) {
            CHECK(0, "%s: step %d: %s", what, i, ldm_last_error());
            break;
        }
    }
    double sum = 0, worst = 0;
    int bad = 0;
    for (int k = 0; k < 2 * PER; k++) sum += x[k];
    for (int j = 0; j < 8; j++) {
        float got = x[(j / 4) * PER + j % 4], ref = (float)g->head[j];
        double rel = fabs((double)got - ref) / fmax(fabs(ref), 1e-3);
        if (rel > worst) worst = rel;
        if (g->exact ? got != ref : !(rel <= 2e-6)) bad++;
    }
    double srel = fabs(sum - g->sum) / fmax(fabs(g->sum), 1.0);
    CHECK(bad == 0, "%s: %d of 8 values differ from diffusers (worst rel %.3g, %s)", what, bad,
          worst, g->exact ? "expected bit-exact" : "bound 2e-6");
    CHECK(srel <= (g->exact ? 1e-9 : 2e-6), "%s: sum %.17g, diffusers %.17g", what, sum, g->sum);
    ldm_sched_free(s);
}

/* ---------------------------------------------------------------------------------- */
/* 2. fixture runs */

static void check_run(const char *name, json_t *run) {
    const char *file = json_string_value(json_object_get(run, "file"));
    const char *model = json_string_value(json_object_get(run, "model"));
    const char *cls = json_string_value(json_object_get(run, "scheduler_class"));
    json_t *over = json_object_get(run, "scheduler_overrides");
    int steps = (int)json_integer_value(json_object_get(run, "num_inference_steps"));
    int evals = (int)json_integer_value(json_object_get(run, "unet_evaluations"));
    double eta = json_number_value(json_object_get(run, "eta"));
    json_t *seeds = json_object_get(run, "seeds");
    if (!file || !model || !cls || !steps) { CHECK(0, "%s: incomplete index entry", name); return; }

    int kind = -1;
    for (int k = 0; k < LDM_SCHED_COUNT; k++)
        if (!strcmp(cls, ldm_sched_class_name(k))) kind = k;
    CHECK(kind >= 0, "%s: unknown class %s", name, cls);
    if (kind < 0) return;
    char *json = sched_json(strchr(model, '/') ? strchr(model, '/') + 1 : model);
    ldm_sched_config c;
    int rc = ldm_sched_config_parse(&c, json, model, kind);
    free(json);
    CHECK(rc == 0, "%s: %s", name, ldm_last_error());
    if (rc) return;
    json_t *v;
    if ((v = json_object_get(over, "use_karras_sigmas"))) c.use_karras_sigmas = json_is_true(v);
    if ((v = json_object_get(over, "timestep_spacing")))
        c.timestep_spacing = ldm_spacing_from_name(json_string_value(v));
    c.eta = eta;
    c.final_sigmas = LDM_FINAL_V025;   /* expected/ is diffusers 0.25.1's */
    ldm_sched *s = ldm_sched_new(&c, steps);
    CHECK(s != NULL, "%s: %s", name, ldm_last_error());
    if (!s) return;
    CHECK(s->n_timesteps == evals, "%s: %d timesteps, diffusers %d", name, s->n_timesteps, evals);

    char path[256];
    snprintf(path, sizeof path, EXP "%s", file);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "%s: %s", name, ldm_last_error());
    if (!st) { ldm_sched_free(s); return; }
    const ldm_st_tensor *t = ldm_st_find(st, "timesteps");
    if (t && t->numel == s->n_timesteps) {
        float *ref = ldm_st_to_f32(t);
        double worst = 0;
        for (int i = 0; i < s->n_timesteps; i++) {
            double d = fabs((double)s->timesteps[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
            if (d > worst) worst = d;
        }
        /* integer schedules exactly; Euler-Karras' fractional ones to float rounding */
        CHECK(worst <= (c.kind == LDM_SCHED_EULER && c.use_karras_sigmas ? 2e-7 : 0),
              "%s: timesteps differ, worst rel %g", name, worst);
        free(ref);
    } else {
        CHECK(0, "%s: timesteps missing or of the wrong length", name);
    }
    t = ldm_st_find(st, "sigmas");
    CHECK((t != NULL) == (s->sigmas != NULL), "%s: sigmas %s in the fixture", name,
          t ? "present" : "absent");
    if (t && s->sigmas && t->numel == s->n_timesteps + 1) {
        float *ref = ldm_st_to_f32(t);
        double worst = 0;
        for (int i = 0; i <= s->n_timesteps; i++) {
            double d = fabs((double)s->sigmas[i] - ref[i]) / fmax(1e-6, fabs(ref[i]));
            if (d > worst) worst = d;
        }
        CHECK(worst <= 2e-7, "%s: sigmas differ, worst rel %g", name, worst);
        free(ref);
    }
    t = ldm_st_find(st, "init_noise_sigma");
    if (t && t->numel == 1) {
        float *ref = ldm_st_to_f32(t);
        CHECK(s->init_noise_sigma == ref[0], "%s: init_noise_sigma %.9g, diffusers %.9g", name,
              s->init_noise_sigma, ref[0]);
        free(ref);
    } else {
        CHECK(0, "%s: init_noise_sigma missing", name);
    }
    /* latents_init: one generator per image */
    t = ldm_st_find(st, "latents_init");
    size_t nb = json_array_size(seeds);
    if (t && nb && t->numel % (int64_t)nb == 0) {
        float *ref = ldm_st_to_f32(t);
        size_t per = (size_t)t->numel / nb, bad = 0;
        float *mine = ldm_xmalloc(per * sizeof(float));
        for (size_t b = 0; b < nb; b++) {
            ldm_rng r;
            ldm_rng_seed(&r, (uint64_t)json_integer_value(json_array_get(seeds, b)));
            ldm_rng_randn(&r, mine, per);
            for (size_t k = 0; k < per; k++) bad += mine[k] != ref[b * per + k];
        }
        CHECK(bad == 0, "%s: latents_init: %zu values differ from our generator", name, bad);
        free(mine);
        free(ref);
    } else {
        CHECK(0, "%s: latents_init missing", name);
    }
    ldm_st_close(st);
    ldm_sched_free(s);
}

static void check_fixture_runs(void) {
    json_error_t e;
    json_t *idx = json_load_file(EXP "index.json", 0, &e);
    CHECK(idx != NULL, EXP "index.json: %s", e.text);
    if (!idx) return;
    json_t *runs = json_object_get(idx, "runs");
    const char *name;
    json_t *run;
    int n = 0;
    json_object_foreach(runs, name, run) { check_run(name, run); n++; }
    CHECK(n >= 21, "index.json lists %d runs, expected 21", n);
    json_decref(idx);
}

/* ---------------------------------------------------------------------------------- */
/* 3. configuration */

static int parse(const char *json, int kind, ldm_sched_config *c) {
    return ldm_sched_config_parse(c, json, "scheduler/scheduler_config.json", kind);
}

static void expect_refused(const char *json, int kind, const char *needle) {
    ldm_sched_config c;
    int rc = parse(json, kind, &c);
    CHECK(rc != 0, "accepted %s", json);
    if (rc) CHECK(strstr(ldm_last_error(), needle) != NULL, "error for %s does not name %s: %s",
                  json, needle, ldm_last_error());
}

static void check_config(void) {
    ldm_sched_config c;
    char *sd1 = sched_json("sd1");
    /* the bundle's class by default */
    CHECK(parse(sd1, -1, &c) == 0 && c.kind == LDM_SCHED_PNDM && c.skip_prk_steps &&
          c.steps_offset == 1 && c.timestep_spacing == LDM_SPACING_LEADING &&
          c.beta_schedule == LDM_BETA_SCALED_LINEAR && !c.set_alpha_to_one,
          "sd1 config as PNDM: %s", ldm_last_error());
    /* another class keeps the shared fields (Euler's own default spacing is linspace) */
    CHECK(parse(sd1, LDM_SCHED_EULER, &c) == 0 && c.timestep_spacing == LDM_SPACING_LEADING &&
          c.steps_offset == 1 && !c.use_karras_sigmas, "sd1 config as Euler");
    CHECK(parse(sd1, LDM_SCHED_DDIM, &c) == 0 && !c.clip_sample && !c.set_alpha_to_one,
          "sd1 config as DDIM keeps clip_sample false, set_alpha_to_one false");
    CHECK(parse(sd1, LDM_SCHED_DPMPP_2M, &c) == 0 && c.solver_order == 2 && c.lower_order_final
          && !c.euler_at_final && c.final_sigmas == LDM_FINAL_ZERO,
          "sd1 config as DPM++ (final_sigmas_type absent: zero, as diffusers >= 0.26)");
    CHECK(ldm_sched_config_parse(&c, "{\"final_sigmas_type\": \"sigma_min\"}", "x", LDM_SCHED_DPMPP_2M) == 0 &&
          c.final_sigmas == LDM_FINAL_SIGMA_MIN, "final_sigmas_type sigma_min");
    CHECK(ldm_final_sigmas_from_name("v0.25") == LDM_FINAL_V025 && ldm_final_sigmas_from_name("x") == -1 &&
          !strcmp(ldm_final_sigmas_name(LDM_FINAL_ZERO), "zero"), "final sigmas names");
    free(sd1);
    /* class defaults for what the config lacks */
    CHECK(parse("{\"_class_name\": \"DDIMScheduler\"}", -1, &c) == 0 && c.clip_sample &&
          c.set_alpha_to_one && c.beta_schedule == LDM_BETA_LINEAR && c.beta_start == 0.0001 &&
          c.timestep_spacing == LDM_SPACING_LEADING && c.steps_offset == 0,
          "DDIM defaults");
    CHECK(parse("{\"_class_name\": \"EulerAncestralDiscreteScheduler\"}", -1, &c) == 0 &&
          c.timestep_spacing == LDM_SPACING_LINSPACE, "Euler a default spacing");
    /* Python's json writes -Infinity; accepted as the default */
    CHECK(parse("{\"_class_name\": \"DPMSolverMultistepScheduler\", \"lambda_min_clipped\": "
                "-Infinity, \"variance_type\": null, \"note\": \"-Infinity NaN\"}", -1, &c) == 0,
          "DPM config with -Infinity: %s", ldm_last_error());
    /* NaN (3 characters) becomes null (4): a text of NaNs outgrew its copy (heap overflow
     * found by tests/fuzz/fuzz_config; make asan catches a regression here) */
    CHECK(parse("{\"_class_name\": \"DDIMScheduler\", \"beta_start\": NaN, \"a\": [NaN,NaN,NaN,NaN,NaN,"
                "NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN]}", -1, &c) == 0,
          "NaN everywhere: %s", ldm_last_error());
    expect_refused("NaNNaNNaNNaNNaNNaNNaNNaNNaNNaNNaNNaNNaNNaNNaNNaN", -1, "scheduler/scheduler_config.json");
    /* refused, by name */
    expect_refused("{\"_class_name\": \"LMSDiscreteScheduler\"}", -1, "LMSDiscreteScheduler");
    expect_refused("{\"beta_schedule\": \"squaredcos_cap_v2\"}", LDM_SCHED_DDIM, "squaredcos_cap_v2");
    expect_refused("{\"trained_betas\": [0.1, 0.2]}", LDM_SCHED_DDIM, "trained_betas");
    expect_refused("{\"thresholding\": true}", LDM_SCHED_DDPM, "thresholding");
    expect_refused("{\"prediction_type\": \"sample\"}", LDM_SCHED_EULER, "prediction_type");
    expect_refused("{\"timestep_spacing\": \"random\"}", LDM_SCHED_PNDM, "timestep_spacing");
    expect_refused("{\"solver_order\": 3}", LDM_SCHED_DPMPP_2M, "solver_order");
    expect_refused("{\"final_sigmas_type\": \"denoise_to_zero\"}", LDM_SCHED_DPMPP_2M, "final_sigmas_type");
    expect_refused("{\"algorithm_type\": \"sde-dpmsolver++\"}", LDM_SCHED_DPMPP_2M, "sde-dpmsolver++");
    expect_refused("{\"lambda_min_clipped\": -5.1}", LDM_SCHED_DPMPP_2M, "lambda_min_clipped");
    expect_refused("{\"variance_type\": \"learned_range\"}", LDM_SCHED_DDPM, "learned_range");
    expect_refused("{\"rescale_betas_zero_snr\": true}", LDM_SCHED_EULER, "rescale_betas_zero_snr");
    expect_refused("{\"beta_start\": \"small\"}", LDM_SCHED_EULER, "beta_start");
    expect_refused("{\"num_train_timesteps\": 1}", LDM_SCHED_EULER, "num_train_timesteps");
    expect_refused("{\"_class_name\": ", -1, "scheduler_config.json");
    expect_refused("[1, 2]", -1, "object");
    /* fields another class does not know are ignored (as from_config does) */
    CHECK(parse("{\"skip_prk_steps\": \"whatever\", \"solver_order\": 7}", LDM_SCHED_DDIM, &c) == 0,
          "unknown fields ignored: %s", ldm_last_error());

    /* schedules that leave the trained range are refused, not indexed out of bounds */
    char *j = sched_json("sd1");
    parse(j, LDM_SCHED_DDIM, &c);
    ldm_sched *s = ldm_sched_new(&c, 1000);
    CHECK(s == NULL && strstr(ldm_last_error(), "1000"), "DDIM leading 1000 steps: %s",
          s ? "accepted" : ldm_last_error());
    ldm_sched_free(s);
    s = ldm_sched_new(&c, 999);
    CHECK(s != NULL && s->n_timesteps == 999 && s->t_int[0] == 999, "DDIM 999 steps: %s",
          ldm_last_error());
    ldm_sched_free(s);
    CHECK(ldm_sched_new(&c, 0) == NULL, "0 steps refused");
    parse(j, LDM_SCHED_DPMPP_2M, &c);
    s = ldm_sched_new(&c, 1000);
    CHECK(s == NULL && strstr(ldm_last_error(), "repeat"), "DPM++ 1000 leading steps: %s",
          s ? "accepted" : ldm_last_error());
    ldm_sched_free(s);
    parse(j, LDM_SCHED_EULER, &c);
    s = ldm_sched_new(&c, 1000);   /* diffusers: t = 1000, sigma clamped by np.interp */
    CHECK(s != NULL && s->timesteps[0] == 1000.0f, "Euler 1000 steps");
    ldm_sched_free(s);
    free(j);

    /* names */
    for (int k = 0; k < LDM_SCHED_COUNT; k++)
        CHECK(ldm_sched_kind_from_name(ldm_sched_name(k)) == k, "name round trip %d", k);
    CHECK(ldm_sched_kind_from_name("euler-a") == -1 && ldm_sched_kind_from_name("") == -1,
          "unknown scheduler names");
    CHECK(ldm_spacing_from_name("trailing") == LDM_SPACING_TRAILING &&
          ldm_spacing_from_name("Leading") == -1, "spacing names");
    ldm_sched_config a = {0};
    a.kind = LDM_SCHED_EULER_A;
    CHECK(!strcmp(ldm_sched_a1111_name(&a), "Euler a"), "A1111 Euler a");
    a.kind = LDM_SCHED_DPMPP_2M; a.use_karras_sigmas = 1;
    CHECK(!strcmp(ldm_sched_a1111_name(&a), "DPM++ 2M Karras"), "A1111 DPM++ 2M Karras");
    a.kind = LDM_SCHED_PNDM;
    CHECK(!strcmp(ldm_sched_a1111_name(&a), "PLMS"), "A1111 PLMS");
    a.kind = LDM_SCHED_DDIM; a.eta = 0;
    CHECK(!ldm_sched_is_ancestral(&a), "DDIM eta 0 deterministic");
    a.eta = 0.5;
    CHECK(ldm_sched_is_ancestral(&a), "DDIM eta 0.5 ancestral");
}

int main(void) {
    for (size_t i = 0; i < sizeof goldens / sizeof goldens[0]; i++) run_golden(&goldens[i]);
    check_fixture_runs();
    check_config();
    TEST_END();
}
