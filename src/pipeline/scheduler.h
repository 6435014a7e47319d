/* scheduler.h - the samplers ("schedulers") of the denoising loop, equal to diffusers 0.25.1:
 * DDIM, DDPM, PNDM (PLMS, optional PRK warm-up), Euler, Euler ancestral and
 * DPM-Solver++(2M), with Karras sigmas for Euler and DPM++.
 *
 * A scheduler is built from the bundle's scheduler/scheduler_config.json the way
 * `OtherScheduler.from_config(config)` does in diffusers: the fields the chosen class
 * knows are taken from the config, the rest keep that class's defaults, unknown fields
 * are ignored.  Values we do not implement (trained_betas, squaredcos_cap_v2,
 * thresholding, ...) are refused with an error naming the field and the value.
 *
 * Arithmetic follows diffusers' dtypes: the betas/alphas_cumprod tables in float32 as
 * torch computes them (linspace as torch's AVX2 kernel, cumprod accumulated in double),
 * timestep/sigma schedules in float64 as numpy computes them then rounded to float32,
 * and every per-step update in float32 in the same order of operations as the torch
 * expressions, so results agree with diffusers to the last bit or nearly so.
 *
 * Randomness (DDPM variance, DDIM eta > 0, Euler ancestral) comes from one ldm_rng per
 * image of the batch, drawn in the order diffusers draws with a list of generators.
 *
 * Usage:
 *   ldm_sched_config c;  ldm_sched_config_parse(&c, json, "scheduler/scheduler_config.json", kind);
 *   (adjust c: karras, eta, spacing)   ldm_sched *s = ldm_sched_new(&c, steps);
 *   x *= s->init_noise_sigma;
 *   for (i = 0; i < s->n_timesteps; i++) {
 *       ldm_sched_scale_model_input(s, i, xin, x, n);   // per copy of x given to the UNet
 *       eps = unet(xin, s->timesteps[i]) ...;
 *       ldm_sched_step(s, i, eps, x, B, per_image, rngs);
 *   }
 */
#ifndef LDM_SCHEDULER_H
#define LDM_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"

typedef enum {
    LDM_SCHED_DDIM, LDM_SCHED_DDPM, LDM_SCHED_PNDM,
    LDM_SCHED_EULER, LDM_SCHED_EULER_A, LDM_SCHED_DPMPP_2M,
    LDM_SCHED_COUNT
} ldm_sched_kind;

typedef enum { LDM_SPACING_LEADING, LDM_SPACING_TRAILING, LDM_SPACING_LINSPACE } ldm_spacing;
typedef enum { LDM_PRED_EPSILON, LDM_PRED_V } ldm_prediction;
typedef enum { LDM_BETA_LINEAR, LDM_BETA_SCALED_LINEAR } ldm_beta_schedule;
/* DPM++'s last sigma (diffusers' final_sigmas_type, since 0.26): ZERO (the default: the
 * last step denoises to sigma 0, first order), SIGMA_MIN (to sqrt((1-a0)/a0)), or V025:
 * diffusers 0.25, before the field existed: sigma_min, except that with Karras sigmas the
 * last Karras sigma is repeated. */
typedef enum { LDM_FINAL_ZERO, LDM_FINAL_SIGMA_MIN, LDM_FINAL_V025, LDM_FINAL_COUNT } ldm_final_sigmas;

/* The effective configuration of one scheduler class (diffusers field names). */
typedef struct ldm_sched_config {
    ldm_sched_kind kind;
    int num_train_timesteps;
    double beta_start, beta_end;
    ldm_beta_schedule beta_schedule;
    ldm_spacing timestep_spacing;
    int steps_offset;
    ldm_prediction prediction_type;
    int set_alpha_to_one;       /* DDIM, PNDM */
    int clip_sample;            /* DDIM, DDPM */
    double clip_sample_range;
    int skip_prk_steps;         /* PNDM */
    int use_karras_sigmas;      /* Euler, DPM++ */
    int solver_order;           /* DPM++: 1 or 2 */
    int lower_order_final;      /* DPM++ */
    int euler_at_final;         /* DPM++ */
    ldm_final_sigmas final_sigmas; /* DPM++ */
    double eta;                 /* DDIM: pipeline argument, 0 = deterministic */
} ldm_sched_config;

/* "ddim" ... "dpmpp_2m" <-> kind.  Returns -1 for an unknown name. */
int ldm_sched_kind_from_name(const char *name);
const char *ldm_sched_name(ldm_sched_kind k);
/* The diffusers class name ("DDIMScheduler", ...). */
const char *ldm_sched_class_name(ldm_sched_kind k);
/* AUTOMATIC1111's sampler name ("DDIM", "Euler a", "DPM++ 2M Karras", ...). */
const char *ldm_sched_a1111_name(const ldm_sched_config *c);
int ldm_spacing_from_name(const char *name);   /* -1 if unknown */
/* "zero", "sigma_min", "v0.25" <-> ldm_final_sigmas (-1 if unknown). */
int ldm_final_sigmas_from_name(const char *name);
const char *ldm_final_sigmas_name(ldm_final_sigmas f);
const char *ldm_spacing_name(ldm_spacing s);

/* Parse a scheduler_config.json.  kind < 0 selects the config's own "_class_name";
 * otherwise the config is read as that class would read it.  `member` names the source
 * in error messages.  Returns 0, or -1 with ldm_error naming member and field. */
int ldm_sched_config_parse(ldm_sched_config *c, const char *json, const char *member, int kind);

typedef struct ldm_sched {
    ldm_sched_config cfg;
    int num_inference_steps;  /* what the user asked for */
    int n_timesteps;          /* UNet evaluations: PNDM has one more (PLMS) or 9 more (PRK) */
    float *timesteps;         /* [n_timesteps], the values given to the UNet */
    float *sigmas;            /* [n_timesteps + 1] for Euler/Euler a/DPM++, else NULL */
    float init_noise_sigma;   /* multiply the initial randn latents by this */
    float *alphas_cumprod;    /* [num_train_timesteps] float32 */
    float final_alpha_cumprod;
    /* internal state */
    int *t_int;               /* integer timesteps (DDIM, DDPM, PNDM, DPM++) */
    int counter;              /* PNDM */
    float *ets[4];            /* PNDM: past model outputs (oldest first), n_ets valid */
    int n_ets;
    float *cur_sample, *cur_model_output;  /* PNDM */
    int has_cur_sample;
    float *model_outputs[2];  /* DPM++: previous and current converted outputs */
    int lower_order_nums;
    size_t n;                 /* elements of x the state buffers were sized for */
} ldm_sched;

/* Create a scheduler for `steps` inference steps (diffusers' set_timesteps).  Errors
 * (returning NULL) name the problem, e.g. a schedule that lands outside the trained
 * timesteps. */
ldm_sched *ldm_sched_new(const ldm_sched_config *c, int steps);
void ldm_sched_free(ldm_sched *s);

/* out[n] = the UNet input for step i (may equal x). */
void ldm_sched_scale_model_input(const ldm_sched *s, int i, float *out, const float *x, size_t n);

/* One denoising step at index i (0..n_timesteps-1): x[B * per_image] is replaced by the
 * previous sample, given the (guided) model output.  rngs[B]: one generator per image,
 * used only by ancestral samplers.  Returns 0, or -1 on misuse (steps out of order). */
int ldm_sched_step(ldm_sched *s, int i, const float *model_output, float *x, int B,
                   size_t per_image, ldm_rng *rngs);

/* Image to image (diffusers' get_timesteps): the index of the first timestep run for
 * strength in (0, 1]; a usage error when no step would run. */
int ldm_sched_start_index(const ldm_sched *s, double strength, int *i0);
/* x[n] = scheduler.add_noise(x, noise, timesteps[i0]) in float32, as the scheduler
 * class does it (alphas for DDIM/DDPM/PNDM, sigmas for Euler/Euler a/DPM++). */
void ldm_sched_add_noise(const ldm_sched *s, int i0, float *x, const float *noise, size_t n);

/* Whether the sampler draws noise at its steps (DDPM, DDIM with eta > 0, Euler a). */
int ldm_sched_is_ancestral(const ldm_sched_config *c);

#endif
