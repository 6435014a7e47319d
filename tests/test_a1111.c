/* test_a1111.c - AUTOMATIC1111's prompt syntax against tests/fixtures/expected_a1111/
 * (made by tests/gen_a1111.py, checked there against A1111's own parser and embedder):
 *   - the parser on every case of parse_cases.jsonl: spans and weights exactly (or the
 *     refusal of a weight that is not a number), and the sd1 tokenization of each: chunks,
 *     token ids, weights, A1111's token count;
 *   - every text case of index.json on sd1, sd2 and sd1_a1111: ids, weights, chunk layout
 *     exactly; the embeddings of prompt and negative prompt (chunks encoded, weighted,
 *     padded to the same length) within rel L2 1e-4;
 *   - txt2img runs against diffusers given the A1111-style embeddings: 8-bit images
 *     within 2 levels (max) and 0.5 (mean), latents_final rel L2;
 *   - without brackets, BREAK or more than 75 tokens both syntaxes give the same floats;
 *   - bad input: too many chunks, a weight that is not a number, weights that are not
 *     finite or give non-finite embeddings: clear usage errors, before any work when the
 *     pipeline checks the parameters.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "model_test_util.h"

#include "app/job.h"
#include "app/record.h"
#include "core/common.h"
#include "format/safetensors.h"
#include "model/prompt.h"
#include "pipeline/pipeline.h"

#define EXP "tests/fixtures/expected_a1111/"

static const char *model_names[3] = {"sd1", "sd2", "sd1_a1111"};
static ldm_pipeline *pipes[3];

static int model_index(const char *name) {
    for (int k = 0; k < 3; k++)
        if (!strcmp(name, model_names[k])) return k;
    return -1;
}

static ldm_pipeline *pipeline_for(const char *name) {
    int k = model_index(name);
    if (k < 0) return NULL;
    if (pipes[k]) return pipes[k];
    char bundle[512], folder[256], log[4096];
    snprintf(bundle, sizeof bundle, "%s/%s.ldmb", mt_tmp, name);
    snprintf(folder, sizeof folder, "tests/fixtures/models/%s", name);
    int rc = mt_pack(folder, bundle, log, sizeof log);
    CHECK(rc == 0, "ldmpack %s: %s", folder, log);
    if (rc) return NULL;
    pipes[k] = ldm_pipeline_open(bundle, mt_cpu());
    CHECK(pipes[k] != NULL, "open %s: %s", bundle, ldm_last_error());
    return pipes[k];
}

/* ---- the parser and the sd1 tokenization of parse_cases.jsonl ---- */

static void test_parse_cases(void) {
    ldm_pipeline *p = pipeline_for("sd1");
    if (!p) return;
    const ldm_tokenizer *tok = ldm_pipeline_tokenizer(p);
    const ldm_tokenizer_info ti = ldm_tokenizer_get_info(tok);
    size_t len;
    char *text = ldm_read_file(EXP "parse_cases.jsonl", &len);
    CHECK(text != NULL, "%s", ldm_last_error());
    if (!text) return;
    int n = 0, bad = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        CHECK(o != NULL, "parse_cases line %d: %s", n + 1, je.text);
        if (!o) continue;
        n++;
        const char *t = json_string_value(json_object_get(o, "text"));
        ldm_prompt_span *sp;
        int ns, rc = ldm_prompt_parse(t, &sp, &ns);
        json_t *spans = json_object_get(o, "spans");
        if (!spans) {   /* A1111 raises ValueError */
            CHECK(rc == -1 && ldm_last_status() == LDM_USAGE && strstr(ldm_last_error(), "not a number"),
                  "\"%s\": refused as A1111 refuses it (rc %d: %s)", t, rc, rc ? ldm_last_error() : "");
            if (!rc) ldm_prompt_spans_free(sp, ns);
            json_decref(o);
            continue;
        }
        int same = rc == 0 && (size_t)ns == json_array_size(spans);
        for (int k = 0; same && k < ns; k++) {
            json_t *e = json_array_get(spans, (size_t)k);
            same = !strcmp(sp[k].text, json_string_value(json_array_get(e, 0))) &&
                   sp[k].weight == json_number_value(json_array_get(e, 1));
        }
        if (!same) {
            bad++;
            if (bad <= 5) {
                char *want = json_dumps(spans, JSON_COMPACT);
                printf("parse \"%s\": want %s, got", t, want);
                for (int k = 0; rc == 0 && k < ns; k++) printf(" [\"%s\", %.17g]", sp[k].text, sp[k].weight);
                printf("\n");
                free(want);
            }
        }
        if (rc == 0) ldm_prompt_spans_free(sp, ns);
        /* the tokenization */
        ldm_prompt_tokens pt;
        json_t *chunks = json_object_get(o, "chunks");
        rc = ldm_prompt_tokenize(tok, t, LDM_SYNTAX_A1111, &pt);
        int ok = rc == 0 && (size_t)pt.n_chunks == json_array_size(chunks) &&
                 pt.token_count == json_integer_value(json_object_get(o, "token_count"));
        for (int c = 0; ok && c < pt.n_chunks; c++) {
            json_t *ch = json_array_get(chunks, (size_t)c);
            const int nt = (int)json_array_size(ch);
            const int32_t *id = pt.ids + (size_t)c * pt.T;
            const float *w = pt.weights + (size_t)c * pt.T;
            ok = pt.chunk_tokens[c] == nt && id[0] == ti.bos && w[0] == 1.0f && id[pt.T - 1] == ti.eos &&
                 w[pt.T - 1] == 1.0f;
            for (int k = 0; ok && k < pt.T - 2; k++) {
                if (k < nt) {
                    json_t *e = json_array_get(ch, (size_t)k);
                    ok = id[1 + k] == json_integer_value(json_array_get(e, 0)) &&
                         w[1 + k] == (float)json_number_value(json_array_get(e, 1));
                } else {
                    ok = id[1 + k] == ti.eos && w[1 + k] == 1.0f;
                }
            }
        }
        if (!ok && ++bad <= 5) printf("tokenize \"%s\": differs (rc %d, %d chunks)\n", t, rc, rc ? 0 : pt.n_chunks);
        if (rc == 0) ldm_prompt_tokens_free(&pt);
        json_decref(o);
    }
    CHECK(n > 400 && bad == 0, "parser and tokenization: %d of %d cases differ from A1111's", bad, n);
    printf("PASS parser: %d cases as A1111's parse_prompt_attention and tokenize_line\n", n);
    free(text);
}

/* ---- the text cases ---- */

static int same_layout(const ldm_prompt_tokens *pt, json_t *lay, const char *what) {
    json_t *ids = json_object_get(lay, "ids"), *ws = json_object_get(lay, "weights"),
           *ct = json_object_get(lay, "chunk_tokens");
    const size_t N = (size_t)pt->n_chunks * pt->T;
    if (pt->n_chunks != json_integer_value(json_object_get(lay, "n_chunks")) ||
        pt->token_count != json_integer_value(json_object_get(lay, "token_count")) ||
        json_array_size(ids) != N || json_array_size(ws) != N) {
        printf("%s: %d chunks, %d tokens; want %d, %d\n", what, pt->n_chunks, pt->token_count,
               (int)json_integer_value(json_object_get(lay, "n_chunks")),
               (int)json_integer_value(json_object_get(lay, "token_count")));
        return 0;
    }
    for (int c = 0; c < pt->n_chunks; c++)
        if (pt->chunk_tokens[c] != json_integer_value(json_array_get(ct, (size_t)c))) {
            printf("%s: chunk %d has %d tokens, want %d\n", what, c, pt->chunk_tokens[c],
                   (int)json_integer_value(json_array_get(ct, (size_t)c)));
            return 0;
        }
    for (size_t k = 0; k < N; k++)
        if (pt->ids[k] != json_integer_value(json_array_get(ids, k)) ||
            pt->weights[k] != (float)json_number_value(json_array_get(ws, k))) {
            printf("%s: position %zu: id %d weight %.9g, want %d %.9g\n", what, k, (int)pt->ids[k],
                   pt->weights[k], (int)json_integer_value(json_array_get(ids, k)),
                   json_number_value(json_array_get(ws, k)));
            return 0;
        }
    return 1;
}

static void test_text_cases(json_t *index) {
    json_t *cases = json_object_get(index, "text_cases");
    CHECK(json_array_size(cases) >= 30, "index.json: %zu text cases", json_array_size(cases));
    ldm_safetensors *st[3] = {0};
    int n_emb = 0;
    double worst = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *model = json_string_value(json_object_get(c, "model"));
        const char *name = json_string_value(json_object_get(c, "name"));
        ldm_pipeline *p = pipeline_for(model);
        if (!p) continue;
        const int k = model_index(model);
        ldm_gen_params g = ldm_gen_params_default();
        g.prompt = json_string_value(json_object_get(c, "prompt"));
        g.negative = json_string_value(json_object_get(c, "negative_prompt"));
        g.clip_skip = (int)json_integer_value(json_object_get(c, "clip_skip"));
        g.prompt_syntax = LDM_SYNTAX_A1111;
        char what[128];
        for (int t = 0; t < 2; t++) {
            ldm_prompt_tokens pt;
            snprintf(what, sizeof what, "%s %s %s", model, name, t ? "negative" : "prompt");
            int rc = ldm_prompt_tokenize(ldm_pipeline_tokenizer(p), t ? g.negative : g.prompt, LDM_SYNTAX_A1111, &pt);
            CHECK(rc == 0 && same_layout(&pt, json_object_get(c, t ? "negative_layout" : "prompt_layout"), what),
                  "%s: chunks, ids and weights as A1111's (%s)", what, rc ? ldm_last_error() : "differ");
            if (rc == 0) ldm_prompt_tokens_free(&pt);
        }
        if (!json_is_true(json_object_get(c, "embedding"))) continue;
        if (!st[k]) {
            char path[256];
            snprintf(path, sizeof path, EXP "text_%s.safetensors", model);
            st[k] = ldm_st_open(path);
            CHECK(st[k] != NULL, "%s", ldm_last_error());
            if (!st[k]) continue;
        }
        ldm_text_embeds te;
        ldm_status s = ldm_pipeline_embed_text(p, &g, NULL, NULL, &te);
        CHECK(s == LDM_OK, "%s %s: %s", model, name, ldm_last_error());
        if (s == LDM_OK) {
            const int tokens = (int)json_integer_value(json_object_get(c, "tokens"));
            const size_t n = (size_t)tokens * ldm_pipeline_text_dim(p);
            CHECK(te.tokens == tokens, "%s %s: %d tokens, want %d", model, name, te.tokens, tokens);
            CHECK(te.pad_conds == json_is_true(json_object_get(c, "pad_conds")), "%s %s: pad_conds %d", model,
                  name, te.pad_conds);
            char tn[96];
            for (int t = 0; t < 2 && te.tokens == tokens; t++) {
                snprintf(tn, sizeof tn, "%s_%s", t ? "N" : "P", name);
                float *ref = mt_f32(st[k], tn, n);
                if (!ref) continue;
                double d = rel_l2(t ? te.negative : te.prompt, ref, n);
                if (d > worst) worst = d;
                CHECK(d <= 1e-4, "%s %s: %s rel L2 %.3g > 1e-4", model, name, tn, d);
                n_emb++;
                free(ref);
            }
        }
        ldm_text_embeds_free(&te);
    }
    printf("PASS text cases: %zu layouts exact, %d embeddings, worst rel L2 %.2e\n",
           json_array_size(cases) * 2, n_emb, worst);
    for (int k = 0; k < 3; k++) ldm_st_close(st[k]);
}

/* ---- images against diffusers given the A1111-style embeddings ---- */

static void test_runs(json_t *index) {
    json_t *runs = json_object_get(index, "runs");
    CHECK(json_object_size(runs) >= 2, "index.json: %zu runs", json_object_size(runs));
    const char *name;
    json_t *run;
    json_object_foreach(runs, name, run) {
        ldm_pipeline *p = pipeline_for(json_string_value(json_object_get(run, "model")));
        if (!p) continue;
        ldm_gen_params g = ldm_gen_params_default();
        g.prompt = json_string_value(json_object_get(run, "prompt"));
        g.negative = json_string_value(json_object_get(run, "negative_prompt"));
        g.clip_skip = (int)json_integer_value(json_object_get(run, "clip_skip"));
        g.steps = (int)json_integer_value(json_object_get(run, "steps"));
        g.guidance = json_number_value(json_object_get(run, "guidance"));
        g.width = (int)json_integer_value(json_object_get(run, "width"));
        g.height = (int)json_integer_value(json_object_get(run, "height"));
        g.seed = (uint64_t)json_integer_value(json_object_get(run, "seed"));
        g.prompt_syntax = LDM_SYNTAX_A1111;
        g.keep_latents = 1;
        ldm_gen_result r;
        int rc = ldm_generate(p, &g, &r);
        CHECK(rc == 0, "run %s: %s", name, ldm_last_error());
        if (rc) continue;
        CHECK(r.text_tokens == json_integer_value(json_object_get(run, "tokens")) &&
              r.pad_conds == json_is_true(json_object_get(run, "pad_conds")),
              "run %s: %d tokens, pad_conds %d", name, r.text_tokens, r.pad_conds);
        CHECK(r.unet_evaluations == json_integer_value(json_object_get(run, "unet_evaluations")),
              "run %s: %d UNet evaluations", name, r.unet_evaluations);
        char path[256];
        snprintf(path, sizeof path, EXP "run_%s.safetensors", name);
        ldm_safetensors *st = ldm_st_open(path);
        CHECK(st != NULL, "%s", ldm_last_error());
        if (st) {
            const size_t nl = (size_t)r.latent_channels * r.latent_h * r.latent_w, ni = (size_t)r.width * r.height * 3;
            float *lf = mt_f32(st, "latents_final", nl);
            double lat = lf ? rel_l2(r.latents_final, lf, nl) : -1;
            CHECK(lf && lat <= 1e-4, "run %s: latents_final rel L2 %.3g > 1e-4 (max abs diff %g)", name, lat,
                  lf ? mt_max_abs_diff(r.latents_final, lf, nl) : -1.0);
            free(lf);
            const ldm_st_tensor *ti = ldm_st_find(st, "image");
            CHECK(ti && ti->dtype == LDM_ST_U8 && (size_t)ti->numel == ni, "run %s: image missing", name);
            if (ti && ti->dtype == LDM_ST_U8 && (size_t)ti->numel == ni) {
                const uint8_t *ref = ti->data;
                double mean;
                const int maxd = mt_u8_diff(r.rgb, ref, ni, &mean);
                printf("PASS run %-18s %d tokens, latents_final rel L2 %.2e, image max %d mean %.4f levels\n",
                       name, r.text_tokens, lat, maxd, mean);
                CHECK(maxd <= 2 && mean <= 0.5, "run %s: image max %d mean %.3f levels", name, maxd,
                      mean);
            }
            ldm_st_close(st);
        }
        /* the parameters text: the prompt verbatim, and A1111's note of the padding */
        char *params = ldm_a1111_parameters(&g, &r, 0, "0123456789abcdef", "sd1_a1111");
        CHECK(!strncmp(params, g.prompt, strlen(g.prompt)) && params[strlen(g.prompt)] == '\n' &&
              (strstr(params, ", Pad conds: True, Version:") != NULL) == r.pad_conds,
              "run %s: parameters text: %s", name, params);
        free(params);
        ldm_gen_result_free(&r);
    }
}

/* ---- the two syntaxes agree on what has no syntax ---- */

static void test_plain_equal(void) {
    const char *texts[] = {"a photo of an astronaut riding a horse on mars", "", "cat, dog: a bird",
                           "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac"};
    for (int m = 0; m < 3; m++) {
        ldm_pipeline *p = pipeline_for(model_names[m]);
        if (!p) continue;
        for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
            ldm_gen_params g = ldm_gen_params_default();
            g.prompt = texts[i];
            g.negative = texts[(i + 1) % 4];
            ldm_text_embeds a, b;
            g.prompt_syntax = LDM_SYNTAX_PLAIN;
            ldm_status sa = ldm_pipeline_embed_text(p, &g, NULL, NULL, &a);
            g.prompt_syntax = LDM_SYNTAX_A1111;
            ldm_status sb = ldm_pipeline_embed_text(p, &g, NULL, NULL, &b);
            const size_t n = (size_t)a.tokens * ldm_pipeline_text_dim(p);
            CHECK(sa == LDM_OK && sb == LDM_OK && a.tokens == b.tokens && b.tokens == 77 &&
                      !memcmp(a.prompt, b.prompt, n * sizeof(float)) &&
                      !memcmp(a.negative, b.negative, n * sizeof(float)),
                  "%s \"%s\": plain and a1111 give the same floats", model_names[m], texts[i]);
            ldm_text_embeds_free(&a);
            ldm_text_embeds_free(&b);
            /* clip skip 2: the prompt alike; the negative prompt too in A1111's syntax only */
            g.clip_skip = 2;
            g.prompt_syntax = LDM_SYNTAX_PLAIN;
            sa = ldm_pipeline_embed_text(p, &g, NULL, NULL, &a);
            g.prompt_syntax = LDM_SYNTAX_A1111;
            sb = ldm_pipeline_embed_text(p, &g, NULL, NULL, &b);
            CHECK(sa == LDM_OK && sb == LDM_OK && !memcmp(a.prompt, b.prompt, n * sizeof(float)) &&
                      memcmp(a.negative, b.negative, n * sizeof(float)),
                  "%s \"%s\" clip skip 2: the same prompt, another negative prompt", model_names[m], texts[i]);
            ldm_text_embeds_free(&a);
            ldm_text_embeds_free(&b);
        }
    }
    /* plain: truncated, one chunk; a1111: not truncated */
    ldm_pipeline *p = pipeline_for("sd1");
    if (!p) return;
    char long_text[2000] = "";
    for (int i = 0; i < 100; i++) strcat(long_text, "red apple ");
    ldm_gen_params g = ldm_gen_params_default();
    g.prompt = long_text;
    g.negative = "";
    ldm_text_embeds a;
    g.prompt_syntax = LDM_SYNTAX_PLAIN;
    CHECK(ldm_pipeline_embed_text(p, &g, NULL, NULL, &a) == LDM_OK && a.tokens == 77 && a.prompt_truncated &&
          !a.pad_conds, "plain: 200 tokens cut to one chunk");
    ldm_text_embeds_free(&a);
    g.prompt_syntax = LDM_SYNTAX_A1111;
    CHECK(ldm_pipeline_embed_text(p, &g, NULL, NULL, &a) == LDM_OK && a.tokens == 3 * 77 && !a.prompt_truncated &&
          a.pad_conds && a.negative_chunks == 1, "a1111: 200 tokens in 3 chunks, the negative padded (%d)",
          a.tokens);
    ldm_text_embeds_free(&a);
}

/* ---- bad input ---- */

static void test_bad_input(void) {
    ldm_pipeline *p = pipeline_for("sd1_a1111");
    if (!p) return;
    const ldm_tokenizer *tok = ldm_pipeline_tokenizer(p);
    char *many = ldm_xmalloc(40 * 8 + 16), *exact = ldm_xmalloc(40 * 8 + 16);
    many[0] = exact[0] = 0;
    for (int i = 0; i < 40; i++) strcat(many, "a BREAK ");
    for (int i = 0; i < LDM_MAX_PROMPT_CHUNKS - 1; i++) strcat(exact, "a BREAK ");
    strcat(exact, "a");
    ldm_prompt_tokens pt;
    int rc = ldm_prompt_tokenize(tok, exact, LDM_SYNTAX_A1111, &pt);
    CHECK(rc == 0 && pt.n_chunks == LDM_MAX_PROMPT_CHUNKS, "%d chunks accepted (%s)", LDM_MAX_PROMPT_CHUNKS,
          rc ? ldm_last_error() : "");
    if (!rc) ldm_prompt_tokens_free(&pt);
    rc = ldm_prompt_tokenize(tok, many, LDM_SYNTAX_A1111, &pt);
    CHECK(rc == -1 && ldm_last_status() == LDM_USAGE && strstr(ldm_last_error(), "more than 32 chunks"),
          "40 chunks refused: %s", ldm_last_error());
    char *huge = ldm_xmalloc(40000);
    huge[0] = 0;
    for (int i = 0; i < 3000; i++) strcat(huge, "dog ");
    rc = ldm_prompt_tokenize(tok, huge, LDM_SYNTAX_A1111, &pt);
    CHECK(rc == -1 && strstr(ldm_last_error(), "more than 32 chunks"), "3000 tokens refused: %s", ldm_last_error());
    rc = ldm_prompt_tokenize(tok, huge, LDM_SYNTAX_PLAIN, &pt);
    CHECK(rc == 0 && pt.truncated && pt.n_chunks == 1 && pt.token_count == 3000, "plain: 3000 tokens truncated");
    if (!rc) ldm_prompt_tokens_free(&pt);

    /* weights: not a number (A1111 raises), not finite (A1111 would give NaN) */
    char inf[600] = "a (cat:";
    for (int i = 0; i < 400; i++) strcat(inf, "9");
    strcat(inf, ")");
    const struct { const char *text, *msg; } bad[] = {
        {"(cat:1.2.3)", "the weight \"1.2.3\" at byte 5 is not a number"},
        {"a (cat: . )", "the weight \".\" at byte 8 is not a number"},
        {"((cat:1e5))", NULL},   /* no 'e' in A1111's number: ":1e5" is text */
        {inf, "the weight of \"cat\" is inf: not a finite number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = ldm_prompt_tokenize(tok, bad[i].text, LDM_SYNTAX_A1111, &pt);
        if (!bad[i].msg) {
            CHECK(rc == 0, "\"%s\" accepted: %s", bad[i].text, ldm_last_error());
            if (!rc) ldm_prompt_tokens_free(&pt);
            continue;
        }
        CHECK(rc == -1 && ldm_last_status() == LDM_USAGE && strstr(ldm_last_error(), bad[i].msg),
              "bad weight %zu: %s", i, ldm_last_error());
        /* the same, found when the parameters are checked (no weights touched yet) */
        ldm_gen_params g = ldm_gen_params_default();
        g.prompt = "fine";
        g.negative = bad[i].text;
        g.prompt_syntax = LDM_SYNTAX_A1111;
        ldm_sched_config sc;
        rc = ldm_gen_check(p, &g, &sc, NULL, NULL);
        CHECK(rc == -1 && ldm_last_status() == LDM_USAGE && !strncmp(ldm_last_error(), "negative prompt: ", 17) &&
              strstr(ldm_last_error(), bad[i].msg), "ldm_gen_check names the negative prompt: %s", ldm_last_error());
        g.prompt_syntax = LDM_SYNTAX_PLAIN;   /* plain: the brackets are text */
        CHECK(ldm_gen_check(p, &g, &sc, NULL, NULL) == 0, "plain syntax takes \"%s\": %s", bad[i].text,
              ldm_last_error());
    }
    /* a finite weight whose embedding overflows: refused, naming the prompt */
    ldm_gen_params g = ldm_gen_params_default();
    g.prompt = "a (cat:300000000000000000000000000000000000000)";
    g.negative = "";
    g.prompt_syntax = LDM_SYNTAX_A1111;
    ldm_text_embeds te;
    ldm_status s = ldm_pipeline_embed_text(p, &g, NULL, NULL, &te);
    CHECK(s == LDM_USAGE && strstr(ldm_last_error(), "prompt: its weights give a text embedding that is not finite"),
          "3e38: %s", ldm_last_error());
    ldm_text_embeds_free(&te);
    g.width = g.height = 64;
    g.steps = 2;
    ldm_gen_result r;
    s = ldm_generate(p, &g, &r);
    CHECK(s == LDM_USAGE && strstr(ldm_last_error(), "not finite") && !r.rgb, "ldm_generate refuses it: %s",
          ldm_last_error());
    /* zero weights are fine: the mean of the chunk keeps BOS and EOS */
    g.prompt = "(a cat:0)";
    s = ldm_pipeline_embed_text(p, &g, NULL, NULL, &te);
    CHECK(s == LDM_OK, "weight 0: %s", ldm_last_error());
    ldm_text_embeds_free(&te);
    free(many);
    free(exact);
    free(huge);
}

/* ---- the emphasis on numbers worked by hand ---- */

static void test_emphasis(void) {
    /* z [2, 2] = [[1, 2], [3, 4]], w = [1, 2]: mean 2.5; weighted [[1, 2], [6, 8]] mean 4.25;
     * times 2.5 / 4.25 */
    float z[4] = {1, 2, 3, 4}, w[2] = {1, 2};
    CHECK(ldm_prompt_emphasis(z, w, 2, 2) == 0, "emphasis");
    const float r = 2.5f / 4.25f, want[4] = {1 * r, 2 * r, 6 * r, 8 * r};
    CHECK(!memcmp(z, want, sizeof z), "emphasis values %g %g %g %g", z[0], z[1], z[2], z[3]);
    float z1[4] = {1, -1, 2, -2}, w1[2] = {1, 1}, keep[4];
    memcpy(keep, z1, sizeof keep);
    CHECK(ldm_prompt_emphasis(z1, w1, 2, 2) == 0 && !memcmp(z1, keep, sizeof keep), "weights 1: unchanged (mean 0)");
    float z2[4] = {1, -1, 2, -2}, w2[2] = {1, 2};
    CHECK(ldm_prompt_emphasis(z2, w2, 2, 2) == -1, "zero mean with weights: not finite, refused");
}

/* ---- the record: an image made before the syntax was recorded replays as plain ---- */

static void test_record(void) {
    static const char *base = "{\"ldm_version\":\"0.1.0\",\"bundle_hash\":\"h\",\"model_name\":\"m\",\"prompt\":\"(p)\","
                              "\"negative_prompt\":\"\",\"seed\":\"1\",\"steps\":2,\"guidance\":7,\"scheduler\":\"pndm\","
                              "\"karras\":false,\"eta\":0,\"timestep_spacing\":null,\"width\":64,\"height\":64,"
                              "\"clip_skip\":1,\"batch_size\":1,\"batch_index\":0%s}";
    const struct { const char *extra; int want; } cases[] = {
        {"", LDM_SYNTAX_PLAIN}, {",\"prompt_syntax\":\"plain\"", LDM_SYNTAX_PLAIN},
        {",\"prompt_syntax\":\"a1111\"", LDM_SYNTAX_A1111}, {",\"prompt_syntax\":\"A1111\"", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char js[1024];
        snprintf(js, sizeof js, base, cases[i].extra);
        ldm_gen_record r;
        int rc = ldm_record_parse_png(js, "t.png", &r);
        CHECK(rc == 0, "record %zu: %s", i, ldm_last_error());
        if (rc) continue;
        ldm_job j;
        ldm_job_init(&j);
        ldm_status st = ldm_job_from_record(&r, &j);
        if (cases[i].want < 0)
            CHECK(st == LDM_DATA && strstr(ldm_last_error(), "unknown prompt syntax \"A1111\""), "record %zu: %s",
                  i, ldm_last_error());
        else
            CHECK(st == LDM_OK && j.prm.prompt_syntax == cases[i].want, "record %zu: syntax %d", i,
                  j.prm.prompt_syntax);
        ldm_record_free(&r);
    }
    ldm_job j;
    ldm_job_init(&j);
    CHECK(j.prm.prompt_syntax == LDM_SYNTAX_A1111 && ldm_gen_params_default().prompt_syntax == LDM_SYNTAX_PLAIN,
          "ldmgen's default is a1111, the pipeline's plain");
}

int main(void) {
    mt_tmpdir();
    test_emphasis();
    test_record();
    json_error_t je;
    json_t *index = json_load_file(EXP "index.json", 0, &je);
    CHECK(index != NULL, "%s: %s", EXP "index.json", je.text);
    test_parse_cases();
    if (index) {
        test_text_cases(index);
        test_runs(index);
    }
    test_plain_equal();
    test_bad_input();
    json_decref(index);
    for (int k = 0; k < 3; k++) ldm_pipeline_close(pipes[k]);
    mt_cleanup();
    TEST_END();
}
