/* scheduler.c - DDIM, DDPM, PNDM, Euler, Euler ancestral and DPM-Solver++(2M) samplers,
 * computed with the same dtypes and the same order of operations as diffusers 0.25.1
 * (torch float32 for tables and updates, numpy float64 for schedules).
 *
 * Invariants: alphas_cumprod is float32 (torch.cumprod accumulates in double and rounds
 * each element); every per-element update below is written as the torch expression it
 * mirrors, one rounding per torch op, with scalars (0-dim tensors) computed in float32.
 * Do not "simplify" these expressions: (a - b) / c and a/c - b/c round differently.
 */
#include "pipeline/scheduler.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "model/config.h"

/* ------------------------------------------------------------------------------------ */
/* names */

static const char *const kind_names[LDM_SCHED_COUNT] = {
    "ddim", "ddpm", "pndm", "euler", "euler_a", "dpmpp_2m"};
static const char *const class_names[LDM_SCHED_COUNT] = {
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"};
static const char *const spacing_names[3] = {"leading", "trailing", "linspace"};

int ldm_sched_kind_from_name(const char *name) {
    for (int k = 0; k < LDM_SCHED_COUNT; k++)
        if (!strcmp(name, kind_names[k])) return k;
    return -1;
}
const char *ldm_sched_name(ldm_sched_kind k) { return kind_names[k]; }
const char *ldm_sched_class_name(ldm_sched_kind k) { return class_names[k]; }

const char *ldm_sched_a1111_name(const ldm_sched_config *c) {
    switch (c->kind) {
    case LDM_SCHED_DDIM: return "DDIM";
    case LDM_SCHED_DDPM: return "DDPM";
    case LDM_SCHED_PNDM: return "PLMS";
    case LDM_SCHED_EULER: return c->use_karras_sigmas ? "Euler Karras" : "Euler";
    case LDM_SCHED_EULER_A: return "Euler a";
    case LDM_SCHED_DPMPP_2M: return c->use_karras_sigmas ? "DPM++ 2M Karras" : "DPM++ 2M";
    default: return "?";
    }
}

int ldm_spacing_from_name(const char *name) {
    for (int k = 0; k < 3; k++)
        if (!strcmp(name, spacing_names[k])) return k;
    return -1;
}
const char *ldm_spacing_name(ldm_spacing s) { return spacing_names[s]; }

static const char *const final_names[LDM_FINAL_COUNT] = {"zero", "sigma_min", "v0.25"};
int ldm_final_sigmas_from_name(const char *name) {
    for (int k = 0; k < LDM_FINAL_COUNT; k++)
        if (!strcmp(name, final_names[k])) return k;
    return -1;
}
const char *ldm_final_sigmas_name(ldm_final_sigmas f) {
    return (unsigned)f < LDM_FINAL_COUNT ? final_names[f] : "?";
}

int ldm_sched_is_ancestral(const ldm_sched_config *c) {
    return c->kind == LDM_SCHED_DDPM || c->kind == LDM_SCHED_EULER_A ||
           (c->kind == LDM_SCHED_DDIM && c->eta > 0);
}

/* ------------------------------------------------------------------------------------ */
/* configuration: OtherScheduler.from_config(config) */

/* Python's json writes NaN, Infinity and -Infinity (e.g. DPM's lambda_min_clipped);
 * jansson rejects them.  Replace them, outside strings, by null. */
static char *json_sanitize(const char *s) {
    size_t n = strlen(s);
    char *o = ldm_xmalloc(n + n / 3 + 1), *p = o;   /* "NaN" (3) -> "null" (4) grows the text */
    int in_str = 0;
    for (size_t i = 0; i < n;) {
        char ch = s[i];
        if (in_str) {
            *p++ = ch;
            if (ch == '\\' && i + 1 < n) *p++ = s[++i];
            else if (ch == '"') in_str = 0;
            i++;
            continue;
        }
        if (ch == '"') { in_str = 1; *p++ = ch; i++; continue; }
        static const char *const bad[] = {"-Infinity", "Infinity", "NaN"};
        int hit = 0;
        for (int k = 0; k < 3 && !hit; k++) {
            size_t L = strlen(bad[k]);
            if (!strncmp(s + i, bad[k], L)) { memcpy(p, "null", 4); p += 4; i += L; hit = 1; }
        }
        if (!hit) *p++ = s[i++];
    }
    *p = 0;
    return o;
}

static int cfg_double_or(const json_t *j, const char *member, const char *field, double def,
                         double *out) {
    const json_t *v = json_object_get(j, field);
    if (!v || json_is_null(v)) { *out = def; return 0; }
    if (!json_is_number(v))
        return ldm_error("%s: field \"%s\": expected a number", member, field);
    *out = json_number_value(v);
    return 0;
}

/* A string field that must be one of `allowed` (NULL-terminated); returns its index. */
static int cfg_choice(const json_t *j, const char *member, const char *field, const char *def,
                      const char *const *allowed, const char *cls, int *out) {
    const char *s;
    if (cfg_str_or(j, member, field, def, &s)) return -1;
    for (int k = 0; allowed[k]; k++)
        if (!strcmp(s, allowed[k])) { *out = k; return 0; }
    char list[256] = "";
    for (int k = 0; allowed[k]; k++) {
        strncat(list, k ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, allowed[k], sizeof list - strlen(list) - 1);
    }
    return ldm_error("%s: field \"%s\" is \"%s\"; ldm's %s supports: %s", member, field, s, cls,
                     list);
}

/* A boolean field that this implementation only supports as false. */
static int cfg_must_be_false(const json_t *j, const char *member, const char *field,
                             const char *cls) {
    int v;
    if (cfg_bool_or(j, member, field, 0, &v)) return -1;
    if (v) return ldm_error("%s: field \"%s\" is true; not supported by ldm's %s", member, field, cls);
    return 0;
}

int ldm_sched_config_parse(ldm_sched_config *c, const char *text, const char *member, int kind) {
    char *clean = json_sanitize(text);
    json_t *j = cfg_parse(clean, member);
    free(clean);
    if (!j) return -1;
    int rc = -1;
    if (kind < 0) {
        const char *cls;
        if (cfg_str(j, member, "_class_name", &cls)) goto done;
        for (int k = 0; k < LDM_SCHED_COUNT; k++)
            if (!strcmp(cls, class_names[k])) kind = k;
        if (kind < 0) {
            ldm_error("%s: field \"_class_name\" is \"%s\"; supported: DDIMScheduler, "
                      "DDPMScheduler, PNDMScheduler, EulerDiscreteScheduler, "
                      "EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler "
                      "(choose one with --scheduler)", member, cls);
            goto done;
        }
    }
    const char *cls = class_names[kind];
    memset(c, 0, sizeof *c);
    c->kind = kind;
    int is_ddim = kind == LDM_SCHED_DDIM, is_ddpm = kind == LDM_SCHED_DDPM;
    int is_pndm = kind == LDM_SCHED_PNDM, is_euler = kind == LDM_SCHED_EULER;
    int is_eulera = kind == LDM_SCHED_EULER_A, is_dpm = kind == LDM_SCHED_DPMPP_2M;

    /* fields every class has */
    if (cfg_int_or(j, member, "num_train_timesteps", 1000, &c->num_train_timesteps)) goto done;
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000) {
        ldm_error("%s: field \"num_train_timesteps\" is %d, expected 2..100000", member,
                  c->num_train_timesteps);
        goto done;
    }
    if (cfg_double_or(j, member, "beta_start", 0.0001, &c->beta_start)) goto done;
    if (cfg_double_or(j, member, "beta_end", 0.02, &c->beta_end)) goto done;
    if (!(c->beta_start > 0 && c->beta_end > 0 && c->beta_start < 1 && c->beta_end < 1)) {
        ldm_error("%s: beta_start %g / beta_end %g: expected values in (0, 1)", member,
                  c->beta_start, c->beta_end);
        goto done;
    }
    static const char *const schedules[] = {"linear", "scaled_linear", NULL};
    int v;
    if (cfg_choice(j, member, "beta_schedule", "linear", schedules, cls, &v)) goto done;
    c->beta_schedule = v;
    if (cfg_has(j, "trained_betas")) {
        ldm_error("%s: field \"trained_betas\" is set; not supported by ldm (use beta_start, "
                  "beta_end, beta_schedule)", member);
        goto done;
    }
    static const char *const spacings[] = {"leading", "trailing", "linspace", NULL};
    const char *def_spacing = (is_euler || is_eulera || is_dpm) ? "linspace" : "leading";
    if (cfg_choice(j, member, "timestep_spacing", def_spacing, spacings, cls, &v)) goto done;
    c->timestep_spacing = v;
    if (cfg_int_or(j, member, "steps_offset", 0, &c->steps_offset)) goto done;
    if (c->steps_offset < 0 || c->steps_offset > c->num_train_timesteps) {
        ldm_error("%s: field \"steps_offset\" is %d, expected 0..%d", member, c->steps_offset,
                  c->num_train_timesteps);
        goto done;
    }
    static const char *const preds[] = {"epsilon", "v_prediction", NULL};
    if (cfg_choice(j, member, "prediction_type", "epsilon", preds, cls, &v)) goto done;
    c->prediction_type = v;

    /* class-specific fields, with that class's defaults */
    c->clip_sample_range = 1.0;
    if (is_ddim || is_pndm) {
        if (cfg_bool_or(j, member, "set_alpha_to_one", is_ddim, &c->set_alpha_to_one)) goto done;
    }
    if (is_ddim || is_ddpm) {
        if (cfg_bool_or(j, member, "clip_sample", 1, &c->clip_sample)) goto done;
        if (cfg_double_or(j, member, "clip_sample_range", 1.0, &c->clip_sample_range)) goto done;
    }
    if (is_ddim || is_ddpm || is_dpm) {
        if (cfg_must_be_false(j, member, "thresholding", cls)) goto done;
    }
    if (is_ddim || is_ddpm || is_euler || is_eulera) {
        if (cfg_must_be_false(j, member, "rescale_betas_zero_snr", cls)) goto done;
    }
    if (is_ddpm) {
        static const char *const vt[] = {"fixed_small", NULL};
        if (cfg_choice(j, member, "variance_type", "fixed_small", vt, cls, &v)) goto done;
    }
    if (is_pndm) {
        if (cfg_bool_or(j, member, "skip_prk_steps", 0, &c->skip_prk_steps)) goto done;
    }
    if (is_euler || is_dpm) {
        if (cfg_bool_or(j, member, "use_karras_sigmas", 0, &c->use_karras_sigmas)) goto done;
    }
    if (is_euler) {
        static const char *const it[] = {"linear", NULL}, *const tt[] = {"discrete", NULL};
        if (cfg_choice(j, member, "interpolation_type", "linear", it, cls, &v)) goto done;
        if (cfg_choice(j, member, "timestep_type", "discrete", tt, cls, &v)) goto done;
        if (cfg_has(j, "sigma_min") || cfg_has(j, "sigma_max")) {
            ldm_error("%s: fields \"sigma_min\"/\"sigma_max\" are set; not supported by ldm's %s",
                      member, cls);
            goto done;
        }
    }
    if (is_dpm) {
        if (cfg_int_or(j, member, "solver_order", 2, &c->solver_order)) goto done;
        if (c->solver_order != 1 && c->solver_order != 2) {
            ldm_error("%s: field \"solver_order\" is %d; ldm's %s supports 1 and 2", member,
                      c->solver_order, cls);
            goto done;
        }
        /* diffusers maps deis -> dpmsolver++ and logrho/bh1/bh2 -> midpoint */
        static const char *const at[] = {"dpmsolver++", "deis", NULL};
        static const char *const st[] = {"midpoint", "logrho", "bh1", "bh2", NULL};
        static const char *const vt[] = {NULL};
        if (cfg_choice(j, member, "algorithm_type", "dpmsolver++", at, cls, &v)) goto done;
        if (cfg_choice(j, member, "solver_type", "midpoint", st, cls, &v)) goto done;
        if (cfg_has(j, "variance_type") &&
            cfg_choice(j, member, "variance_type", "", vt, cls, &v)) goto done;
        if (cfg_bool_or(j, member, "lower_order_final", 1, &c->lower_order_final)) goto done;
        if (cfg_bool_or(j, member, "euler_at_final", 0, &c->euler_at_final)) goto done;
        static const char *const ft[] = {"zero", "sigma_min", NULL};
        if (cfg_choice(j, member, "final_sigmas_type", "zero", ft, cls, &v)) goto done;
        c->final_sigmas = (ldm_final_sigmas)v;
        if (cfg_must_be_false(j, member, "use_lu_lambdas", cls)) goto done;
        if (cfg_has(j, "lambda_min_clipped")) {
            ldm_error("%s: field \"lambda_min_clipped\" is set; ldm's %s supports only the "
                      "default -inf", member, cls);
            goto done;
        }
    }
    rc = 0;
done:
    json_decref(j);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* tables (torch float32) and schedules (numpy float64) */

/* torch.linspace(start, end, steps, dtype=float32) on CPU, AVX2 build: vectors of 8
 * written two at a time, each vector from a base computed with a fused multiply-add,
 * the remainder (and scalar path) from start + step*i or end - step*(steps-i-1). */
static void torch_linspace_f32(float *out, double start_d, double end_d, int steps) {
    const float start = (float)start_d, end = (float)end_d;
    const float step = (end - start) / (float)(steps - 1);
    const int halfway = steps / 2, V = 8;
    const int nvec = steps / (2 * V) * (2 * V);
    int idx = 0;
    for (; idx < nvec; idx += V) {
        float base = idx < halfway ? fmaf(step, (float)idx, start)
                                   : fmaf(-step, (float)(steps - idx - 1), end);
        for (int i = 0; i < V; i++) out[idx + i] = base + (float)i * step;
    }
    for (; idx < steps; idx++)
        out[idx] = idx < halfway ? fmaf(step, (float)idx, start)
                                 : fmaf(-step, (float)(steps - idx - 1), end);
}

/* np.interp(x, arange(n), fp) in float64. */
static double np_interp(double x, const float *fp, int n) {
    if (!(x >= 0)) return fp[0];
    if (x >= n - 1) return fp[n - 1];
    int j = (int)floor(x);
    if ((double)j == x) return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

/* np.linspace(start, stop, num) element i (float64). */
static double np_linspace(double start, double stop, int num, int i) {
    if (num == 1) return start;
    if (i == num - 1) return stop;
    double step = (stop - start) / (double)(num - 1);
    return (double)i * step + start;
}

/* np.arange(start, 0, -step) with a float step: length and elements as numpy fills them.
 * Returns the length; out may be NULL to ask for it. */
static int np_arange_down(double start, double step, double *out, int cap) {
    double len_d = ceil((0.0 - start) / -step);
    int len = len_d > 0 ? (int)len_d : 0;
    double next = start + -step, delta = next - start;
    for (int i = 0; out && i < len && i < cap; i++)
        out[i] = i == 0 ? start : i == 1 ? next : start + (double)i * delta;
    return len;
}

/* diffusers' _convert_to_karras (rho = 7) on float64. */
static void karras_sigmas(double *out, int n, double sigma_min, double sigma_max) {
    const double rho = 7.0;
    double min_inv_rho = pow(sigma_min, 1.0 / rho), max_inv_rho = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < n; i++) {
        double ramp = np_linspace(0.0, 1.0, n, i);
        out[i] = pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
    }
}

/* diffusers' _sigma_to_t: fractional timestep of sigma by interpolating log sigmas
 * (log_sigmas is the float32 table, ascending). */
static double sigma_to_t(double sigma, const float *log_sigmas, int n) {
    double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int i = 0; i < n; i++)
        if (log_sigma - (double)log_sigmas[i] >= 0) low = i;
    if (low > n - 2) low = n - 2;
    int high = low + 1;
    float lo = log_sigmas[low], hi = log_sigmas[high];
    double w = ((double)lo - log_sigma) / (double)(lo - hi);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1.0 - w) * (double)low + w * (double)high;
}

static int check_t(const ldm_sched *s, long t) {
    if (t < 0 || t >= s->cfg.num_train_timesteps)
        return ldm_error("%s: %d steps with timestep_spacing \"%s\" and steps_offset %d give "
                         "timestep %ld, outside the trained range 0..%d",
                         class_names[s->cfg.kind], s->num_inference_steps,
                         spacing_names[s->cfg.timestep_spacing], s->cfg.steps_offset, t,
                         s->cfg.num_train_timesteps - 1);
    return 0;
}

/* Integer timesteps of DDIM/DDPM (descending), diffusers set_timesteps. */
static int ddim_timesteps(ldm_sched *s, int n, int *t) {
    const int T = s->cfg.num_train_timesteps;
    for (int i = 0; i < n; i++) {
        long v;
        switch (s->cfg.timestep_spacing) {
        case LDM_SPACING_LINSPACE: v = (long)nearbyint(np_linspace(0, T - 1, n, n - 1 - i)); break;
        case LDM_SPACING_LEADING: v = (long)(n - 1 - i) * (T / n) + s->cfg.steps_offset; break;
        default: {
            double *a = ldm_xmalloc(sizeof(double) * (size_t)(n + 2));
            int len = np_arange_down(T, (double)T / n, a, n + 2);
            if (len != n) {
                free(a);
                return ldm_error("%s: trailing spacing gives %d timesteps for %d steps",
                                 class_names[s->cfg.kind], len, n);
            }
            v = (long)nearbyint(a[i]) - 1;
            free(a);
        }
        }
        if (check_t(s, v)) return -1;
        t[i] = (int)v;
    }
    return 0;
}

static int setup_ddim_ddpm(ldm_sched *s, int n) {
    if (n > s->cfg.num_train_timesteps)
        return ldm_error("%s: %d steps is more than num_train_timesteps %d",
                         class_names[s->cfg.kind], n, s->cfg.num_train_timesteps);
    s->n_timesteps = n;
    s->t_int = ldm_xmalloc(sizeof(int) * (size_t)n);
    return ddim_timesteps(s, n, s->t_int);
}

static int setup_pndm(ldm_sched *s, int n) {
    const int T = s->cfg.num_train_timesteps;
    /* _timesteps, ascending */
    long *ts = ldm_xmalloc(sizeof(long) * (size_t)n);
    int rc = -1;
    if (s->cfg.timestep_spacing == LDM_SPACING_TRAILING) {
        double *a = ldm_xmalloc(sizeof(double) * (size_t)(n + 2));
        int len = np_arange_down(T, (double)T / n, a, n + 2);
        if (len != n) {
            free(a);
            ldm_error("%s: trailing spacing gives %d timesteps for %d steps", class_names[2], len, n);
            goto out;
        }
        for (int i = 0; i < n; i++) ts[i] = (long)nearbyint(a[n - 1 - i]) - 1;
        free(a);
    } else {
        for (int i = 0; i < n; i++)
            ts[i] = s->cfg.timestep_spacing == LDM_SPACING_LINSPACE
                        ? (long)nearbyint(np_linspace(0, T - 1, n, i))
                        : (long)i * (T / n) + s->cfg.steps_offset;
    }
    int m = 0;
    long *all = ldm_xmalloc(sizeof(long) * (size_t)(n + 16));
    if (s->cfg.skip_prk_steps) {
        /* concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1] */
        long *c = ldm_xmalloc(sizeof(long) * (size_t)(n + 1));
        int k = 0;
        for (int i = 0; i < n - 1; i++) c[k++] = ts[i];
        if (n >= 2) c[k++] = ts[n - 2];
        c[k++] = ts[n - 1];
        for (int i = k - 1; i >= 0; i--) all[m++] = c[i];
        free(c);
    } else {
        if (n < 4) {
            ldm_error("PNDMScheduler: PRK warm-up (skip_prk_steps false) needs at least 4 steps, "
                      "got %d", n);
            free(all);
            goto out;
        }
        /* prk = (_t[-4:].repeat(2) + tile([0, T//n//2], 4))[:-1].repeat(2)[1:-1][::-1] */
        long p8[8], p14[14];
        for (int i = 0; i < 8; i++) p8[i] = ts[n - 4 + i / 2] + (i % 2 ? T / n / 2 : 0);
        for (int i = 0; i < 7; i++) p14[2 * i] = p14[2 * i + 1] = p8[i];
        for (int i = 12; i >= 1; i--) all[m++] = p14[i];
        for (int i = n - 4; i >= 0; i--) all[m++] = ts[i]; /* plms = _t[:-3][::-1] */
    }
    s->n_timesteps = m;
    s->t_int = ldm_xmalloc(sizeof(int) * (size_t)m);
    for (int i = 0; i < m; i++) {
        if (check_t(s, all[i])) { free(all); goto out; }
        s->t_int[i] = (int)all[i];
    }
    free(all);
    rc = 0;
out:
    free(ts);
    return rc;
}

/* Euler / Euler ancestral: float timesteps, sigmas by linear interpolation (float64). */
static int setup_euler(ldm_sched *s, int n, const float *sig_full, const float *log_sig) {
    const int T = s->cfg.num_train_timesteps;
    float *tf = ldm_xmalloc(sizeof(float) * (size_t)n);
    double *sd = ldm_xmalloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n; i++) {
        switch (s->cfg.timestep_spacing) {
        case LDM_SPACING_LINSPACE: tf[i] = (float)np_linspace(0, T - 1, n, n - 1 - i); break;
        case LDM_SPACING_LEADING:
            tf[i] = (float)((double)(n - 1 - i) * (T / n)) + (float)s->cfg.steps_offset;
            break;
        default: {
            double *a = ldm_xmalloc(sizeof(double) * (size_t)(n + 2));
            int len = np_arange_down(T, (double)T / n, a, n + 2);
            if (len != n) {
                free(a); free(tf); free(sd);
                return ldm_error("%s: trailing spacing gives %d timesteps for %d steps",
                                 class_names[s->cfg.kind], len, n);
            }
            tf[i] = (float)nearbyint(a[i]) - 1.0f;
            free(a);
        }
        }
        /* np.interp clamps outside 0..T-1, so e.g. t = T (leading, 1000 steps) works */
        sd[i] = np_interp((double)tf[i], sig_full, T);
    }
    s->n_timesteps = n;
    s->timesteps = ldm_xmalloc(sizeof(float) * (size_t)n);
    s->sigmas = ldm_xmalloc(sizeof(float) * (size_t)(n + 1));
    if (s->cfg.use_karras_sigmas) {
        double *k = ldm_xmalloc(sizeof(double) * (size_t)n);
        karras_sigmas(k, n, sd[n - 1], sd[0]);
        for (int i = 0; i < n; i++) {
            s->timesteps[i] = (float)sigma_to_t(k[i], log_sig, T);
            s->sigmas[i] = (float)k[i];
        }
        free(k);
    } else {
        for (int i = 0; i < n; i++) {
            s->timesteps[i] = tf[i];
            s->sigmas[i] = (float)sd[i];
        }
    }
    s->sigmas[n] = 0.0f;
    float mx = 0;
    for (int i = 0; i <= n; i++) mx = s->sigmas[i] > mx ? s->sigmas[i] : mx;
    s->init_noise_sigma = s->cfg.timestep_spacing == LDM_SPACING_LEADING
                              ? sqrtf(mx * mx + 1.0f) : mx;
    free(tf);
    free(sd);
    return 0;
}

/* DPM-Solver++ timesteps and sigmas.  The last sigma is final_sigmas_type's: 0 (diffusers'
 * default since 0.26; the last step is then first order and returns the x0 prediction), or
 * sigma(t=0) = sqrt((1-a0)/a0).  diffusers 0.25.1 has no final_sigmas_type: the
 * last step goes to sigma(t=0) = sqrt((1-a0)/a0) (not 0), and with Karras sigmas to the
 * last Karras sigma again (a step of h = 0 that leaves x unchanged).  lower_order_final
 * makes the last step first order only when there are fewer than 15 steps. */
static int setup_dpm(ldm_sched *s, int n, const float *sig_full, const float *log_sig) {
    const int T = s->cfg.num_train_timesteps, last = T;  /* lambda_min_clipped = -inf */
    long *ts = ldm_xmalloc(sizeof(long) * (size_t)(n + 2));
    int len = n;
    switch (s->cfg.timestep_spacing) {
    case LDM_SPACING_LINSPACE:
        for (int i = 0; i < n; i++) ts[i] = (long)nearbyint(np_linspace(0, last - 1, n + 1, n - i));
        break;
    case LDM_SPACING_LEADING:
        for (int i = 0; i < n; i++) ts[i] = (long)(n - i) * (last / (n + 1)) + s->cfg.steps_offset;
        break;
    default: {
        double *a = ldm_xmalloc(sizeof(double) * (size_t)(n + 2));
        len = np_arange_down(last, (double)T / n, a, n + 2);
        if (len != n) {
            free(a); free(ts);
            return ldm_error("%s: trailing spacing gives %d timesteps for %d steps",
                             class_names[s->cfg.kind], len, n);
        }
        for (int i = 0; i < n; i++) ts[i] = (long)nearbyint(a[i]) - 1;
        free(a);
    }
    }
    s->n_timesteps = n;
    s->t_int = ldm_xmalloc(sizeof(int) * (size_t)n);
    s->sigmas = ldm_xmalloc(sizeof(float) * (size_t)(n + 1));
    if (s->cfg.use_karras_sigmas) {
        double *k = ldm_xmalloc(sizeof(double) * (size_t)n);
        karras_sigmas(k, n, (double)sig_full[0], (double)sig_full[T - 1]);
        for (int i = 0; i < n; i++) {
            ts[i] = (long)nearbyint(sigma_to_t(k[i], log_sig, T));
            s->sigmas[i] = (float)k[i];
        }
        s->sigmas[n] = s->cfg.final_sigmas == LDM_FINAL_ZERO ? 0.0f
                       : s->cfg.final_sigmas == LDM_FINAL_V025 ? (float)k[n - 1] : sig_full[0];
        free(k);
    } else {
        for (int i = 0; i < n; i++) s->sigmas[i] = (float)np_interp((double)ts[i], sig_full, T);
        s->sigmas[n] = s->cfg.final_sigmas == LDM_FINAL_ZERO ? 0.0f : sig_full[0];
    }
    for (int i = 0; i < n; i++) s->t_int[i] = (int)ts[i];
    free(ts);
    /* np.interp clamps timesteps beyond T-1; a repeated sigma makes h = 0 and the
     * second-order update 0/0 (diffusers returns NaN there) */
    for (int i = 1; i < n && !s->cfg.use_karras_sigmas; i++)
        if (!(s->sigmas[i] < s->sigmas[i - 1]))
            return ldm_error("%s: %d steps with timestep_spacing \"%s\" repeat sigma at "
                             "timestep %d; use fewer steps or another spacing",
                             class_names[s->cfg.kind], n, spacing_names[s->cfg.timestep_spacing],
                             s->t_int[i]);
    s->init_noise_sigma = 1.0f;
    return 0;
}

ldm_sched *ldm_sched_new(const ldm_sched_config *c, int steps) {
    if (steps < 1) {
        ldm_error("scheduler: %d steps, expected at least 1", steps);
        return NULL;
    }
    ldm_sched *s = ldm_xcalloc(1, sizeof *s);
    s->cfg = *c;
    s->num_inference_steps = steps;
    const int T = c->num_train_timesteps;

    /* betas, alphas, alphas_cumprod: float32 as torch */
    float *betas = ldm_xmalloc(sizeof(float) * (size_t)T);
    if (c->beta_schedule == LDM_BETA_SCALED_LINEAR) {
        torch_linspace_f32(betas, pow(c->beta_start, 0.5), pow(c->beta_end, 0.5), T);
        for (int i = 0; i < T; i++) betas[i] = betas[i] * betas[i];
    } else {
        torch_linspace_f32(betas, c->beta_start, c->beta_end, T);
    }
    s->alphas_cumprod = ldm_xmalloc(sizeof(float) * (size_t)T);
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        acc *= (double)(1.0f - betas[i]);
        s->alphas_cumprod[i] = (float)acc;
    }
    free(betas);
    s->final_alpha_cumprod = c->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    s->init_noise_sigma = 1.0f;

    /* sigma table sqrt((1 - a) / a) and its log, float32 */
    float *sig = ldm_xmalloc(sizeof(float) * (size_t)T);
    float *lsig = ldm_xmalloc(sizeof(float) * (size_t)T);
    for (int i = 0; i < T; i++) {
        float a = s->alphas_cumprod[i];
        sig[i] = sqrtf((1.0f - a) / a);
        lsig[i] = logf(sig[i]);
    }

    int rc;
    switch (c->kind) {
    case LDM_SCHED_DDIM: case LDM_SCHED_DDPM: rc = setup_ddim_ddpm(s, steps); break;
    case LDM_SCHED_PNDM: rc = setup_pndm(s, steps); break;
    case LDM_SCHED_EULER: case LDM_SCHED_EULER_A: rc = setup_euler(s, steps, sig, lsig); break;
    case LDM_SCHED_DPMPP_2M: rc = setup_dpm(s, steps, sig, lsig); break;
    default: rc = ldm_error("scheduler: unknown kind %d", (int)c->kind);
    }
    free(sig);
    free(lsig);
    if (rc) { ldm_sched_free(s); return NULL; }
    if (!s->timesteps) {
        s->timesteps = ldm_xmalloc(sizeof(float) * (size_t)s->n_timesteps);
        for (int i = 0; i < s->n_timesteps; i++) s->timesteps[i] = (float)s->t_int[i];
    }
    return s;
}

void ldm_sched_free(ldm_sched *s) {
    if (!s) return;
    free(s->timesteps);
    free(s->sigmas);
    free(s->alphas_cumprod);
    free(s->t_int);
    for (int i = 0; i < 4; i++) free(s->ets[i]);
    free(s->cur_sample);
    free(s->cur_model_output);
    free(s->model_outputs[0]);
    free(s->model_outputs[1]);
    free(s);
}

/* ------------------------------------------------------------------------------------ */
/* steps */

void ldm_sched_scale_model_input(const ldm_sched *s, int i, float *out, const float *x, size_t n) {
    if (s->cfg.kind == LDM_SCHED_EULER || s->cfg.kind == LDM_SCHED_EULER_A) {
        float sigma = s->sigmas[i];
        float d = sqrtf(sigma * sigma + 1.0f);     /* (sigma**2 + 1) ** 0.5 */
        for (size_t k = 0; k < n; k++) out[k] = x[k] / d;
    } else if (out != x) {
        memcpy(out, x, n * sizeof(float));
    }
}

/* noise[B * per]: one draw of `per` normals from each image's generator. */
static float *draw_noise(int B, size_t per, ldm_rng *rngs) {
    float *noise = ldm_xmalloc(sizeof(float) * (size_t)B * per);
    for (int b = 0; b < B; b++) ldm_rng_randn(&rngs[b], noise + (size_t)b * per, per);
    return noise;
}

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

static void step_ddim(ldm_sched *s, int i, const float *mo, float *x, int B, size_t per,
                      ldm_rng *rngs) {
    const size_t n = (size_t)B * per;
    const int t = s->t_int[i];
    const int prev_t = t - s->cfg.num_train_timesteps / s->num_inference_steps;
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    const float b_t = 1.0f - a_t;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float b_prev = 1.0f - a_prev;
    const float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
    const float std_dev_t = (float)s->cfg.eta * sqrtf(variance);
    const float dir_coef = sqrtf((1.0f - a_prev) - std_dev_t * std_dev_t);
    const float sa_prev = sqrtf(a_prev);
    const float r = (float)s->cfg.clip_sample_range;
    float *noise = s->cfg.eta > 0 ? draw_noise(B, per, rngs) : NULL;
    for (size_t k = 0; k < n; k++) {
        float pos, eps;
        if (s->cfg.prediction_type == LDM_PRED_EPSILON) {
            pos = (x[k] - sb * mo[k]) / sa;
            eps = mo[k];
        } else {
            pos = sa * x[k] - sb * mo[k];
            eps = sa * mo[k] + sb * x[k];
        }
        if (s->cfg.clip_sample) pos = clampf(pos, -r, r);
        float prev = sa_prev * pos + dir_coef * eps;
        if (noise) prev = prev + std_dev_t * noise[k];
        x[k] = prev;
    }
    free(noise);
}

static void step_ddpm(ldm_sched *s, int i, const float *mo, float *x, int B, size_t per,
                      ldm_rng *rngs) {
    const size_t n = (size_t)B * per;
    const int t = s->t_int[i];
    const int prev_t = t - s->cfg.num_train_timesteps / s->num_inference_steps;
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : 1.0f;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float c_pos = (sqrtf(a_prev) * cur_beta) / b_t;
    const float c_x = sqrtf(cur_alpha) * b_prev / b_t;
    const float r = (float)s->cfg.clip_sample_range;
    float *noise = NULL, sd = 0;
    if (t > 0) {
        noise = draw_noise(B, per, rngs);
        float var = (1.0f - a_prev) / (1.0f - a_t) * cur_beta;
        if (var < 1e-20f) var = 1e-20f;
        sd = sqrtf(var);
    }
    for (size_t k = 0; k < n; k++) {
        float pos = s->cfg.prediction_type == LDM_PRED_EPSILON ? (x[k] - sb * mo[k]) / sa
                                                               : sa * x[k] - sb * mo[k];
        if (s->cfg.clip_sample) pos = clampf(pos, -r, r);
        float prev = c_pos * pos + c_x * x[k];
        if (noise) prev = prev + sd * noise[k];
        x[k] = prev;
    }
    free(noise);
}

/* PNDM's _get_prev_sample: x_{prev} from x_t and the (combined) epsilon. */
static void pndm_prev(const ldm_sched *s, float *out, const float *x, const float *mo, size_t n,
                      int t, int prev_t) {
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float x_coef = sqrtf(a_prev / a_t);
    const float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    const float diff = a_prev - a_t;
    for (size_t k = 0; k < n; k++) {
        float e = mo[k];
        if (s->cfg.prediction_type == LDM_PRED_V) e = sa * mo[k] + sb * x[k];
        out[k] = x_coef * x[k] - diff * e / denom;
    }
}

static void pndm_push(ldm_sched *s, const float *mo, size_t n) {
    /* ets = ets[-3:] + [mo] */
    if (s->n_ets == 4) {
        float *old = s->ets[0];
        memmove(s->ets, s->ets + 1, 3 * sizeof(float *));
        s->ets[3] = old;
        s->n_ets = 3;
    }
    if (!s->ets[s->n_ets]) s->ets[s->n_ets] = ldm_xmalloc(n * sizeof(float));
    memcpy(s->ets[s->n_ets], mo, n * sizeof(float));
    s->n_ets++;
}

static void step_pndm(ldm_sched *s, int i, const float *mo, float *x, size_t n) {
    const int ratio = s->cfg.num_train_timesteps / s->num_inference_steps;
    int t = s->t_int[i];
    if (!s->cur_sample) s->cur_sample = ldm_xmalloc(n * sizeof(float));
    if (!s->cur_model_output) s->cur_model_output = ldm_xcalloc(n, sizeof(float));
    float *m = ldm_xmalloc(n * sizeof(float));
    const int n_prk = s->cfg.skip_prk_steps ? 0 : 12;
    if (s->counter < n_prk) {
        /* Runge-Kutta warm-up (step_prk) */
        int diff_to_prev = s->counter % 2 ? 0 : ratio / 2;
        int prev_t = t - diff_to_prev;
        t = s->t_int[s->counter / 4 * 4];
        float *cmo = s->cur_model_output;
        const float sixth = (float)(1.0 / 6.0), third = (float)(1.0 / 3.0);
        const float *use = mo;
        switch (s->counter % 4) {
        case 0:
            for (size_t k = 0; k < n; k++) cmo[k] = cmo[k] + sixth * mo[k];
            pndm_push(s, mo, n);
            memcpy(s->cur_sample, x, n * sizeof(float));
            s->has_cur_sample = 1;
            break;
        case 1: case 2:
            for (size_t k = 0; k < n; k++) cmo[k] = cmo[k] + third * mo[k];
            break;
        default:
            for (size_t k = 0; k < n; k++) m[k] = cmo[k] + sixth * mo[k];
            memset(cmo, 0, n * sizeof(float));
            use = m;
        }
        const float *cur = s->has_cur_sample ? s->cur_sample : x;
        pndm_prev(s, x, cur, use, n, t, prev_t);
    } else {
        /* linear multistep (step_plms) */
        int prev_t = t - ratio;
        const float *sample = x;
        if (s->counter != 1) {
            pndm_push(s, mo, n);
        } else {
            prev_t = t;
            t = t + ratio;
        }
        float **e = s->ets + s->n_ets - 1;  /* e[0] = ets[-1], e[-1] = ets[-2], ... */
        if (s->n_ets == 1 && s->counter == 0) {
            memcpy(m, mo, n * sizeof(float));
            memcpy(s->cur_sample, x, n * sizeof(float));
            s->has_cur_sample = 1;
        } else if (s->n_ets == 1 && s->counter == 1) {
            for (size_t k = 0; k < n; k++) m[k] = (mo[k] + e[0][k]) / 2.0f;
            sample = s->cur_sample;
            s->has_cur_sample = 0;
        } else if (s->n_ets == 2) {
            for (size_t k = 0; k < n; k++) m[k] = (3.0f * e[0][k] - e[-1][k]) / 2.0f;
        } else if (s->n_ets == 3) {
            for (size_t k = 0; k < n; k++)
                m[k] = (23.0f * e[0][k] - 16.0f * e[-1][k] + 5.0f * e[-2][k]) / 12.0f;
        } else {
            const float c = (float)(1.0 / 24.0);
            for (size_t k = 0; k < n; k++)
                m[k] = c * (55.0f * e[0][k] - 59.0f * e[-1][k] + 37.0f * e[-2][k] -
                            9.0f * e[-3][k]);
        }
        pndm_prev(s, x, sample, m, n, t, prev_t);
    }
    s->counter++;
    free(m);
}

static void step_euler(ldm_sched *s, int i, const float *mo, float *x, size_t n) {
    const float sigma = s->sigmas[i];
    const float sigma_hat = sigma * (0.0f + 1.0f);   /* gamma = 0: s_churn = 0 */
    const float dt = s->sigmas[i + 1] - sigma_hat;
    const float s2p1 = sigma * sigma + 1.0f;
    const float vc = -sigma / sqrtf(s2p1);
    for (size_t k = 0; k < n; k++) {
        float pos = s->cfg.prediction_type == LDM_PRED_EPSILON ? x[k] - sigma_hat * mo[k]
                                                               : mo[k] * vc + x[k] / s2p1;
        float d = (x[k] - pos) / sigma_hat;
        x[k] = x[k] + d * dt;
    }
}

static void step_euler_a(ldm_sched *s, int i, const float *mo, float *x, int B, size_t per,
                         ldm_rng *rngs) {
    const size_t n = (size_t)B * per;
    const float sigma = s->sigmas[i], from = sigma, to = s->sigmas[i + 1];
    const float up = sqrtf(to * to * (from * from - to * to) / (from * from));
    const float down = sqrtf(to * to - up * up);
    const float dt = down - sigma;
    const float s2p1 = sigma * sigma + 1.0f;
    const float vc = -sigma / sqrtf(s2p1);
    float *noise = draw_noise(B, per, rngs);
    for (size_t k = 0; k < n; k++) {
        float pos = s->cfg.prediction_type == LDM_PRED_EPSILON ? x[k] - sigma * mo[k]
                                                               : mo[k] * vc + x[k] / s2p1;
        float d = (x[k] - pos) / sigma;
        float prev = x[k] + d * dt;
        x[k] = prev + noise[k] * up;
    }
    free(noise);
}

/* _sigma_to_alpha_sigma_t */
static void dpm_alpha_sigma(float sigma, float *alpha_t, float *sigma_t) {
    *alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_t = sigma * *alpha_t;
}

static void step_dpm(ldm_sched *s, int i, const float *mo, float *x, size_t n) {
    const int N = s->n_timesteps;
    const int lower_final = i == N - 1 && (s->cfg.euler_at_final ||
                                           (s->cfg.lower_order_final && N < 15) ||
                                           s->cfg.final_sigmas == LDM_FINAL_ZERO);
    const int lower_second = i == N - 2 && s->cfg.lower_order_final && N < 15;
    /* convert_model_output -> x0 prediction; model_outputs shift */
    float a_s0, s_s0;
    dpm_alpha_sigma(s->sigmas[i], &a_s0, &s_s0);
    float *tmp = s->model_outputs[0];
    s->model_outputs[0] = s->model_outputs[1];
    s->model_outputs[1] = tmp ? tmp : ldm_xmalloc(n * sizeof(float));
    float *m0 = s->model_outputs[1], *m1 = s->model_outputs[0];
    for (size_t k = 0; k < n; k++)
        m0[k] = s->cfg.prediction_type == LDM_PRED_EPSILON ? (x[k] - s_s0 * mo[k]) / a_s0
                                                           : a_s0 * x[k] - s_s0 * mo[k];
    float a_t, s_t;
    dpm_alpha_sigma(s->sigmas[i + 1], &a_t, &s_t);
    const float lambda_t = logf(a_t) - logf(s_t);
    const float lambda_s0 = logf(a_s0) - logf(s_s0);
    const float h = lambda_t - lambda_s0;
    const float c_x = s_t / s_s0;
    const float c_d0 = a_t * (expf(-h) - 1.0f);
    if (s->cfg.solver_order == 1 || s->lower_order_nums < 1 || lower_final) {
        for (size_t k = 0; k < n; k++) x[k] = c_x * x[k] - c_d0 * m0[k];
    } else {
        (void)lower_second;  /* order 2 is the highest we implement */
        float a_s1, s_s1;
        dpm_alpha_sigma(s->sigmas[i - 1], &a_s1, &s_s1);
        const float lambda_s1 = logf(a_s1) - logf(s_s1);
        const float h_0 = lambda_s0 - lambda_s1;
        const float r0 = h_0 / h;
        const float inv_r0 = 1.0f / r0;
        const float c_d1 = 0.5f * c_d0;
        for (size_t k = 0; k < n; k++) {
            float d1 = inv_r0 * (m0[k] - m1[k]);
            x[k] = c_x * x[k] - c_d0 * m0[k] - c_d1 * d1;
        }
    }
    if (s->lower_order_nums < s->cfg.solver_order) s->lower_order_nums++;
}

int ldm_sched_step(ldm_sched *s, int i, const float *mo, float *x, int B, size_t per,
                   ldm_rng *rngs) {
    const size_t n = (size_t)B * per;
    if (i < 0 || i >= s->n_timesteps)
        return ldm_error("scheduler step %d outside 0..%d", i, s->n_timesteps - 1);
    if (s->n == 0) s->n = n;
    if (s->n != n)
        return ldm_error("scheduler: sample size changed from %zu to %zu between steps", s->n, n);
    switch (s->cfg.kind) {
    case LDM_SCHED_DDIM: step_ddim(s, i, mo, x, B, per, rngs); break;
    case LDM_SCHED_DDPM: step_ddpm(s, i, mo, x, B, per, rngs); break;
    case LDM_SCHED_PNDM: step_pndm(s, i, mo, x, n); break;
    case LDM_SCHED_EULER: step_euler(s, i, mo, x, n); break;
    case LDM_SCHED_EULER_A: step_euler_a(s, i, mo, x, B, per, rngs); break;
    case LDM_SCHED_DPMPP_2M: step_dpm(s, i, mo, x, n); break;
    default: return ldm_error("scheduler: unknown kind");
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* image to image: where to start, and the noise for that start (diffusers' get_timesteps
 * and add_noise) */

int ldm_sched_start_index(const ldm_sched *s, double strength, int *i0) {
    if (!(strength > 0 && strength <= 1))
        return ldm_error_kind(LDM_USAGE, "strength %g: expected a number above 0 and at most 1", strength);
    const int steps = s->num_inference_steps;
    int init_timestep = (int)(steps * strength);   /* int(num_inference_steps * strength) */
    if (init_timestep > steps) init_timestep = steps;
    int t_start = steps - init_timestep;
    if (t_start < 0) t_start = 0;
    int start = t_start * 1;   /* scheduler.order is 1 for every scheduler ldm has */
    if (start >= s->n_timesteps)
        return ldm_error_kind(LDM_USAGE, "strength %g with %d steps runs no denoising step "
                              "(int(steps * strength) is 0): raise --strength or -n", strength, steps);
    *i0 = start;
    return 0;
}

void ldm_sched_add_noise(const ldm_sched *s, int i0, float *x, const float *noise, size_t n) {
    switch (s->cfg.kind) {
    case LDM_SCHED_EULER: case LDM_SCHED_EULER_A: {
        const float sigma = s->sigmas[i0];
        for (size_t k = 0; k < n; k++) {
            float t = noise[k] * sigma;
            x[k] = x[k] + t;
        }
        break;
    }
    case LDM_SCHED_DPMPP_2M: {
        /* _sigma_to_alpha_sigma_t: alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha */
        const float sigma = s->sigmas[i0];
        const float alpha = 1.0f / sqrtf(sigma * sigma + 1.0f), sigma_t = sigma * alpha;
        for (size_t k = 0; k < n; k++) {
            float a = alpha * x[k], b = sigma_t * noise[k];
            x[k] = a + b;
        }
        break;
    }
    default: {   /* DDIM, DDPM, PNDM: sqrt(alpha_prod) x + sqrt(1 - alpha_prod) noise */
        const float ac = s->alphas_cumprod[s->t_int[i0]];
        const float sa = sqrtf(ac), sb = sqrtf(1.0f - ac);   /* torch: x ** 0.5 is sqrt */
        for (size_t k = 0; k < n; k++) {
            float a = sa * x[k], b = sb * noise[k];
            x[k] = a + b;
        }
    }
    }
}
