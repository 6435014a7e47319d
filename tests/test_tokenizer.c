/* test_tokenizer.c - the CLIP tokenizer against transformers' CLIPTokenizerFast.
 *
 * tests/fixtures/clip/cases.jsonl and extra_cases.jsonl (tests/gen_tokenizer_cases.py)
 * hold texts with their BPE ids and full 77-id encodings for SD 1.x (pad <|endoftext|>)
 * and SD 2.x (pad "!").  Every id must match exactly.
 *
 * One known disagreement: cases.jsonl lists for "hello!!! what... ?!" SD 2.x ids equal to
 * the SD 1.x ones, but transformers 4.36 (CLIPTokenizer and CLIPTokenizerFast, with
 * pad_token="!") makes "!" a special added token and encodes each "!" of the prompt as 0.
 * We follow transformers: that line's SD 2.x ids are checked from extra_cases.jsonl.
 *
 * transformers 5 writes tokenizer.json only (tests/fixtures/models/sd1_tf5/tokenizer,
 * a CLIP vocabulary cut to 2000 merges): tests/fixtures/expected_tf5/tokenizer_cases.jsonl
 * has transformers 5's ids for the same texts with that folder (sd2: pad "!", the
 * added_tokens and config of tokenizer_variants.json), and tokenizer_cases_clip.jsonl
 * with the full CLIP vocabulary, checked here through a tokenizer.json made of that
 * folder's file with the full vocab.json / merges.txt put in (merges once as pairs,
 * once as "a b" strings).  Malformed tokenizer.json files name the field.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "test.h"
#include "model/tokenizer.h"

#define CLIP_DIR "tests/fixtures/clip/"
#define MODELS_DIR "tests/fixtures/models/"
#define TF5_TOK MODELS_DIR "sd1_tf5/tokenizer/"
#define EXP5 "tests/fixtures/expected_tf5/"

static char *vocab, *merges;
static size_t vocab_len, merges_len;

static ldm_tokenizer *make(const char *config, const char *special) {
    ldm_tokenizer *t = ldm_tokenizer_new(vocab, vocab_len, merges, merges_len, config, special);
    CHECK(t != NULL, "ldm_tokenizer_new: %s", ldm_last_error());
    return t;
}

static int ids_equal(const int32_t *got, int n, json_t *want) {
    if (!json_is_array(want) || (int)json_array_size(want) != n) return 0;
    for (int i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, i)) != got[i]) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    printf("  %s:", what);
    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

/* Check every case of a .jsonl file; returns the number of cases read.  The SD 2.x ids
 * of cases.jsonl lines with "!" are skipped (see the top of this file). */
static int check_cases(const char *path, const ldm_tokenizer *sd1, const ldm_tokenizer *sd2) {
    size_t len;
    char *text = ldm_read_file(path, &len);
    CHECK(text != NULL, "%s", ldm_last_error());
    if (!text) return 0;
    int n_cases = 0;
    char *line = text;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        json_error_t err;
        json_t *c = json_loads(line, 0, &err);
        CHECK(c != NULL, "%s: %s", path, err.text);
        if (c) {
            const char *s = json_string_value(json_object_get(c, "text"));
            n_cases++;
            int32_t ids[512], full[77];
            int n = ldm_tokenize_bpe(sd1, s, ids, 512);
            int ok = ids_equal(ids, n, json_object_get(c, "bpe"));
            CHECK(ok, "%s: bpe of \"%s\"", path, s);
            if (!ok) print_ids("got", ids, n);

            int trunc = -1;
            int used = ldm_tokenize(sd1, s, full, 77, &trunc);
            ok = ids_equal(full, 77, json_object_get(c, "input_ids_sd1"));
            CHECK(ok, "%s: input_ids_sd1 of \"%s\"", path, s);
            if (!ok) print_ids("got", full, 77);
            CHECK(trunc == (n > 75), "%s: truncated=%d for %d BPE ids", path, trunc, n);
            CHECK(used == (n > 75 ? 77 : n + 2), "%s: %d ids used", path, used);

            int skip_sd2 = strstr(path, "clip/cases.jsonl") != NULL && strchr(s, '!') != NULL;
            if (!skip_sd2) {
                ldm_tokenize(sd2, s, full, 77, NULL);
                ok = ids_equal(full, 77, json_object_get(c, "input_ids_sd2"));
                CHECK(ok, "%s: input_ids_sd2 of \"%s\"", path, s);
                if (!ok) print_ids("got", full, 77);
            }
            json_decref(c);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return n_cases;
}

/* The tiny model folders' tokenizer configs: SD 1.x pads with 49407, SD 2.x with 0. */
static void test_model_configs(void) {
    const char *names[2] = {"sd1", "sd2"};
    const int32_t pads[2] = {49407, 0};
    for (int k = 0; k < 2; k++) {
        char p1[256], p2[256];
        snprintf(p1, sizeof p1, MODELS_DIR "%s/tokenizer/tokenizer_config.json", names[k]);
        snprintf(p2, sizeof p2, MODELS_DIR "%s/tokenizer/special_tokens_map.json", names[k]);
        char *config = ldm_read_file(p1, NULL), *special = ldm_read_file(p2, NULL);
        CHECK(config && special, "%s", ldm_last_error());
        ldm_tokenizer *t = make(config, special);
        if (t) {
            ldm_tokenizer_info info = ldm_tokenizer_get_info(t);
            CHECK(info.bos == 49406 && info.eos == 49407 && info.pad == pads[k] && info.max_length == 77,
                  "%s: bos %d eos %d pad %d max %d", names[k], info.bos, info.eos, info.pad, info.max_length);
            int32_t ids[77];
            int used = ldm_tokenize(t, "a photo! of a cat", ids, 77, NULL);
            /* sd2: "!" inside the prompt is the pad token too */
            int32_t want1[] = {49406, 320, 1125, 256, 539, 320, 2368, 49407};
            int32_t want2[] = {49406, 320, 1125, 0, 539, 320, 2368, 49407};
            const int32_t *want = k ? want2 : want1;
            CHECK(used == 8 && memcmp(ids, want, sizeof want1) == 0 && ids[8] == pads[k] && ids[76] == pads[k],
                  "%s: encoding of \"a photo! of a cat\"", names[k]);
            ldm_tokenizer_free(t);
        }
        free(config);
        free(special);
    }
}

static void test_errors(void) {
    ldm_tokenizer *t = make(NULL, NULL);
    if (!t) return;
    int32_t ids[77];
    const char *bad[] = {"caf\xc3", "a\xff b", "\xed\xa0\x80 surrogate", "\xc0\xaf overlong", "ok \x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int n = ldm_tokenize(t, bad[i], ids, 77, NULL);
        CHECK(n == -1 && strstr(ldm_last_error(), "invalid UTF-8"), "bad UTF-8 #%zu: n=%d err=%s", i, n,
              ldm_last_error());
    }
    CHECK(ldm_tokenize_bpe(t, "a\xff", ids, 77) == -1, "bpe accepted invalid UTF-8");

    /* cap smaller than the count: count returned, cap ids written */
    int32_t small[2] = {-5, -5};
    int n = ldm_tokenize_bpe(t, "a photo of a cat", small, 1);
    CHECK(n == 5 && small[0] == 320 && small[1] == -5, "cap: n=%d ids %d %d", n, small[0], small[1]);
    /* a shorter max_len still keeps BOS ... EOS */
    int trunc = 0;
    n = ldm_tokenize(t, "a photo of a cat", ids, 4, &trunc);
    CHECK(n == 4 && trunc == 1 && ids[0] == 49406 && ids[1] == 320 && ids[2] == 1125 && ids[3] == 49407,
          "max_len 4: n=%d trunc=%d", n, trunc);
    CHECK(ldm_tokenize(t, "x", ids, 1, NULL) == -1, "max_len 1 accepted");
    ldm_tokenizer_free(t);

    /* malformed inputs name the file and the place */
    ldm_tokenizer *b = ldm_tokenizer_new("{\"a\": 1", 7, merges, merges_len, NULL, NULL);
    CHECK(!b && strstr(ldm_last_error(), "vocab.json"), "truncated vocab: %s", ldm_last_error());
    b = ldm_tokenizer_new("[1,2]", 5, merges, merges_len, NULL, NULL);
    CHECK(!b && strstr(ldm_last_error(), "vocab.json"), "array vocab: %s", ldm_last_error());
    b = ldm_tokenizer_new("{\"a\": \"x\"}", 10, merges, merges_len, NULL, NULL);
    CHECK(!b && strstr(ldm_last_error(), "\"a\""), "string id: %s", ldm_last_error());

    const char *m1 = "#version: 0.2\ni n\nt h\nthree tokens here\n";
    b = ldm_tokenizer_new(vocab, vocab_len, m1, strlen(m1), NULL, NULL);
    CHECK(!b && strstr(ldm_last_error(), "merges.txt line 4"), "bad merge line: %s", ldm_last_error());
    const char *m2 = "#version: 0.2\ni n\nzzqq xxyy\n";
    b = ldm_tokenizer_new(vocab, vocab_len, m2, strlen(m2), NULL, NULL);
    CHECK(!b && strstr(ldm_last_error(), "merges.txt line 3") && strstr(ldm_last_error(), "zzqq"),
          "unknown merge token: %s", ldm_last_error());
    b = ldm_tokenizer_new(vocab, vocab_len, merges, merges_len, "{\"pad_token\": 5}", NULL);
    CHECK(!b && strstr(ldm_last_error(), "pad_token"), "bad pad field: %s", ldm_last_error());
    b = ldm_tokenizer_new(vocab, vocab_len, merges, merges_len, NULL, "{\"pad_token\": \"<pad>\"}");
    CHECK(!b && strstr(ldm_last_error(), "<pad>"), "pad not in vocab: %s", ldm_last_error());
    b = ldm_tokenizer_new(vocab, vocab_len, merges, merges_len, "{not json", NULL);
    CHECK(!b && strstr(ldm_last_error(), "tokenizer_config.json"), "bad config: %s", ldm_last_error());
}


/* ---- tokenizer.json (transformers 5) -------------------------------------------- */

static char *tj_text;      /* models/sd1_tf5/tokenizer/tokenizer.json */
static json_t *variants;   /* expected_tf5/tokenizer_variants.json */

static ldm_tokenizer *make_json(const char *tj, const char *config, const char *special, const char *dir) {
    ldm_tokenizer_files f = {0};
    f.tokenizer_json = tj;
    f.tokenizer_json_len = tj ? strlen(tj) : 0;
    f.config_json = config;
    f.special_json = special;
    f.dir = dir;
    return ldm_tokenizer_load(&f);
}

/* The folder's tokenizer.json with `edit` applied to its parsed root, as text. */
typedef void (*json_edit)(json_t *root, void *arg);
static char *edited(json_edit edit, void *arg) {
    json_error_t e;
    json_t *root = json_loads(tj_text, 0, &e);
    if (!root) return NULL;
    if (edit) edit(root, arg);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

static json_t *variant(const char *name, const char *what) {
    return json_object_get(json_object_get(variants, name), what);
}

/* added_tokens and tokenizer_config.json of a tokenizer_variants.json entry; with
 * `clip`, also the full CLIP vocabulary and merges (as pairs or "a b" strings). */
typedef struct { const char *name; int clip, string_merges; } variant_arg;
static void apply_variant(json_t *root, void *arg) {
    const variant_arg *v = arg;
    json_object_set(root, "added_tokens", variant(v->name, "added_tokens"));
    if (!v->clip) return;
    json_t *model = json_object_get(root, "model");
    json_object_set_new(model, "vocab", json_loadb(vocab, vocab_len, 0, NULL));
    json_t *arr = json_array();
    char *text = ldm_xstrdup(merges), *save = NULL;
    int line = 0;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (line++ == 0 && !strncmp(l, "#version", 8)) continue;
        char *sp = strchr(l, ' ');
        if (!sp) continue;
        if (v->string_merges) {
            json_array_append_new(arr, json_string(l));
        } else {
            *sp = 0;
            json_array_append_new(arr, json_pack("[ss]", l, sp + 1));
        }
    }
    free(text);
    json_object_set_new(model, "merges", arr);
}

static ldm_tokenizer *make_variant(const char *name, int clip, int string_merges) {
    variant_arg a = {name, clip, string_merges};
    char *tj = edited(apply_variant, &a);
    char *cfg = json_dumps(variant(name, "tokenizer_config"), 0);
    ldm_tokenizer *t = tj && cfg ? make_json(tj, cfg, NULL, NULL) : NULL;
    CHECK(t != NULL, "tokenizer.json variant %s%s: %s", name, clip ? " (full CLIP vocabulary)" : "",
          ldm_last_error());
    free(tj);
    free(cfg);
    return t;
}

static void test_tf5(void) {
    tj_text = ldm_read_file(TF5_TOK "tokenizer.json", NULL);
    char *config = ldm_read_file(TF5_TOK "tokenizer_config.json", NULL);
    json_error_t e;
    variants = json_load_file(EXP5 "tokenizer_variants.json", 0, &e);
    CHECK(tj_text && config && variants, "tf5 fixtures: %s %s", ldm_last_error(), e.text);
    if (!tj_text || !config || !variants) goto out;

    /* the folder as transformers 5 wrote it: tokenizer.json + tokenizer_config.json */
    ldm_tokenizer *sd1 = make_json(tj_text, config, NULL, NULL);
    CHECK(sd1 != NULL, "sd1_tf5 tokenizer: %s", ldm_last_error());
    ldm_tokenizer *sd2 = make_variant("sd2", 0, 0);
    if (sd1) {
        ldm_tokenizer_info info = ldm_tokenizer_get_info(sd1);
        CHECK(info.bos == 2512 && info.eos == 2513 && info.pad == 2513 && info.unk == 2513 &&
                  info.max_length == 77, "sd1_tf5: bos %d eos %d pad %d unk %d max %d", info.bos, info.eos,
              info.pad, info.unk, info.max_length);
    }
    if (sd2) {
        ldm_tokenizer_info info = ldm_tokenizer_get_info(sd2);
        CHECK(info.pad == 0 && info.eos == 2513, "sd2 variant: pad %d eos %d", info.pad, info.eos);
    }
    if (sd1 && sd2) {
        int n = check_cases(EXP5 "tokenizer_cases.jsonl", sd1, sd2);
        CHECK(n >= 31, "tokenizer_cases.jsonl: %d cases", n);
    }
    ldm_tokenizer_free(sd2);

    /* the full CLIP vocabulary in transformers 5's tokenizer.json */
    ldm_tokenizer *c1 = make_variant("clip_sd1", 1, 0), *c2 = make_variant("clip_sd2", 1, 1);
    if (c1 && c2) {
        int n = check_cases(EXP5 "tokenizer_cases_clip.jsonl", c1, c2);
        CHECK(n >= 31, "tokenizer_cases_clip.jsonl: %d cases", n);
        ldm_tokenizer_info info = ldm_tokenizer_get_info(c2);
        CHECK(info.bos == 49406 && info.eos == 49407 && info.pad == 0, "clip_sd2: bos %d eos %d pad %d",
              info.bos, info.eos, info.pad);
    }
    ldm_tokenizer_free(c1);
    ldm_tokenizer_free(c2);

    /* given both, vocab.json + merges.txt win over tokenizer.json (real vocabulary ids) */
    ldm_tokenizer_files f = {0};
    f.vocab_json = vocab;
    f.vocab_len = vocab_len;
    f.merges = merges;
    f.merges_len = merges_len;
    f.tokenizer_json = tj_text;
    f.tokenizer_json_len = strlen(tj_text);
    ldm_tokenizer *both = ldm_tokenizer_load(&f);
    CHECK(both && ldm_tokenizer_get_info(both).eos == 49407, "vocab.json + merges.txt first: %s",
          both ? "eos differs" : ldm_last_error());
    ldm_tokenizer_free(both);
    f.merges = NULL;   /* vocab.json alone does not count: tokenizer.json is used */
    both = ldm_tokenizer_load(&f);
    CHECK(both && ldm_tokenizer_get_info(both).eos == 2513, "vocab.json alone: %s",
          both ? "not tokenizer.json" : ldm_last_error());
    ldm_tokenizer_free(both);
    f.tokenizer_json = NULL;
    both = ldm_tokenizer_load(&f);
    CHECK(!both && strstr(ldm_last_error(), "tokenizer/merges.txt: missing"), "vocab.json alone: %s",
          ldm_last_error());

    /* a tokenizer.json with the pattern older converters wrote (no special-token
     * alternatives) is read too */
    if (sd1) {
        char *old = NULL;
        const char *needle = "<\\\\|startoftext\\\\|>|<\\\\|endoftext\\\\|>|";
        char *at = strstr(tj_text, needle);
        CHECK(at != NULL, "pattern not found in the fixture's tokenizer.json");
        if (at) {
            size_t k = (size_t)(at - tj_text), nl = strlen(needle);
            old = ldm_xmalloc(strlen(tj_text) + 1);
            memcpy(old, tj_text, k);
            strcpy(old + k, at + nl);
        }
        ldm_tokenizer *t = old ? make_json(old, config, NULL, NULL) : NULL;
        CHECK(t != NULL, "old pattern: %s", ldm_last_error());
        if (t) {
            int32_t a[16], b[16];
            const char *txt = "a <|ENDOFTEXT|>!! photo";
            int na = ldm_tokenize_bpe(t, txt, a, 16), nb = ldm_tokenize_bpe(sd1, txt, b, 16);
            CHECK(na > 0 && nb > 0 && (na != nb || memcmp(a, b, (size_t)na * sizeof *a)),
                  "the two patterns split \"<|endoftext|>!!\" alike");
            na = ldm_tokenize_bpe(t, "a photo of a cat", a, 16);
            nb = ldm_tokenize_bpe(sd1, "a photo of a cat", b, 16);
            CHECK(na == nb && !memcmp(a, b, (size_t)na * sizeof *a), "old pattern: other ids");
        }
        ldm_tokenizer_free(t);
        free(old);
    }
    ldm_tokenizer_free(sd1);
out:
    free(config);
}

/* One edit of the folder's tokenizer.json: loading must fail with `needle` in the error. */
typedef struct { const char *path; const char *value; } set_arg;  /* "model.vocab", JSON text or NULL */
static void set_field(json_t *root, void *arg) {
    const set_arg *a = arg;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", a->path);
    json_t *obj = root;
    char *key = buf, *dot;
    while ((dot = strchr(key, '.')) != NULL) {
        *dot = 0;
        obj = json_object_get(obj, key);
        key = dot + 1;
    }
    char *br = strchr(key, '[');
    if (br) { /* "merges[5]" */
        *br = 0;
        json_t *arr = json_object_get(obj, key);
        size_t i = (size_t)atoi(br + 1);
        json_array_set_new(arr, i, json_loads(a->value, JSON_DECODE_ANY, NULL));
    } else if (a->value) {
        json_object_set_new(obj, key, json_loads(a->value, JSON_DECODE_ANY, NULL));
    } else {
        json_object_del(obj, key);
    }
}

static void expect_json_error(const char *path, const char *value, const char *needle) {
    set_arg a = {path, value};
    char *tj = edited(set_field, &a);
    ldm_tokenizer *t = tj ? make_json(tj, NULL, NULL, NULL) : NULL;
    CHECK(!t && strstr(ldm_last_error(), "tokenizer/tokenizer.json") && strstr(ldm_last_error(), needle),
          "%s = %s: error lacks \"%s\": %s", path, value ? value : "(deleted)", needle,
          t ? "(loaded)" : ldm_last_error());
    ldm_tokenizer_free(t);
    free(tj);
}

static void test_tf5_errors(void) {
    if (!tj_text) return;
    expect_json_error("model.vocab", NULL, "field model.vocab: missing");
    expect_json_error("model.vocab", "[\"a\", \"b\"]", "field model.vocab: expected a JSON object");
    expect_json_error("model.vocab", "{\"a\": 0}", "field model.vocab: no token for byte");
    expect_json_error("model.vocab", "{\"a\": -3}", "field model.vocab: token \"a\"");
    expect_json_error("model.merges", NULL, "field model.merges: missing");
    expect_json_error("model.merges", "{}", "field model.merges: expected an array");
    expect_json_error("model.merges[5]", "\"abc\"", "field model.merges[5]: expected \"a b\"");
    expect_json_error("model.merges[5]", "\"a b c\"", "field model.merges[5]");
    expect_json_error("model.merges[3]", "[\"a\", \"b\", \"c\"]", "field model.merges[3]");
    expect_json_error("model.merges[3]", "[\"a\", 7]", "field model.merges[3]");
    expect_json_error("model.merges[3]", "42", "field model.merges[3]");
    expect_json_error("model.merges[0]", "[\"zzqq\", \"x\"]",
                      "field model.merges[0]: token \"zzqq\" is not in model.vocab");
    expect_json_error("model.merges[1]", "\"i qqqq\"", "field model.merges[1]: token \"qqqq\" is not in model.vocab");
    expect_json_error("model", NULL, "field model: missing");
    expect_json_error("model.type", "\"WordPiece\"", "field model.type: \"WordPiece\"");
    expect_json_error("model.end_of_word_suffix", NULL, "field model.end_of_word_suffix");
    expect_json_error("model.continuing_subword_prefix", "\"##\"", "field model.continuing_subword_prefix");
    expect_json_error("pre_tokenizer", "null", "field pre_tokenizer: no Split");
    expect_json_error("pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}}",
                      "field pre_tokenizer.pattern.Regex");
    expect_json_error("added_tokens", "[{\"content\": \"x\"}]", "field added_tokens[0]");
    expect_json_error("added_tokens", "{}", "field added_tokens: expected an array");
    expect_json_error("added_tokens",
                      "[{\"id\": 2513, \"content\": \"<|endoftext|>\", \"lstrip\": true, \"special\": true}]",
                      "field added_tokens[0].lstrip");

    /* the pattern inside the Sequence names its index */
    json_error_t e;
    json_t *root = json_loads(tj_text, 0, &e);
    json_t *split = json_array_get(json_object_get(json_object_get(root, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(json_object_get(split, "pattern"), "Regex", json_string("[a-z]+"));
    char *tj = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    ldm_tokenizer *t = make_json(tj, NULL, NULL, "some/dir");
    CHECK(!t && strstr(ldm_last_error(), "some/dir/tokenizer.json: field pre_tokenizer.pretokenizers[0].pattern.Regex: "
                                         "\"[a-z]+\" is not CLIP's pattern"),
          "bad pattern: %s", ldm_last_error());
    free(tj);

    t = make_json("{\"model\": ", NULL, NULL, NULL);
    CHECK(!t && strstr(ldm_last_error(), "tokenizer/tokenizer.json line 1"), "not JSON: %s", ldm_last_error());
    t = make_json("[1]", NULL, NULL, NULL);
    CHECK(!t && strstr(ldm_last_error(), "tokenizer/tokenizer.json: expected a JSON object"), "array: %s",
          ldm_last_error());
    t = make_json(tj_text, "{\"pad_token\": \"<pad>\"}", NULL, NULL);
    CHECK(!t && strstr(ldm_last_error(), "pad_token \"<pad>\" is not in model.vocab"), "pad: %s", ldm_last_error());
    t = make_json(NULL, NULL, NULL, NULL);
    CHECK(!t && strstr(ldm_last_error(), "missing"), "nothing: %s", ldm_last_error());
}

int main(void) {
    vocab = ldm_read_file(CLIP_DIR "vocab.json", &vocab_len);
    merges = ldm_read_file(CLIP_DIR "merges.txt", &merges_len);
    CHECK(vocab && merges, "%s", ldm_last_error());
    if (!vocab || !merges) TEST_END();

    ldm_tokenizer *sd1 = make(NULL, NULL);
    ldm_tokenizer *sd2 = make(NULL, "{\"pad_token\": \"!\"}"); /* CLIPTokenizerFast(pad_token="!") */
    if (sd1 && sd2) {
        int n1 = check_cases(CLIP_DIR "cases.jsonl", sd1, sd2);
        int n2 = check_cases(CLIP_DIR "extra_cases.jsonl", sd1, sd2);
        CHECK(n1 >= 12 && n2 >= 19, "cases read: %d + %d", n1, n2);
    }
    ldm_tokenizer_free(sd1);
    ldm_tokenizer_free(sd2);
    test_model_configs();
    test_errors();
    test_tf5();
    test_tf5_errors();
    free(tj_text);
    json_decref(variants);
    free(vocab);
    free(merges);
    TEST_END();
}
