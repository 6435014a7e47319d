/* fuzz_tokenizer.c - libFuzzer harness for the CLIP BPE tokenizer (model/tokenizer.c).
 *
 * The input is a prompt (bytes; the text ends at the first NUL), encoded with the fixture
 * tokenizer (tests/fixtures/clip/vocab.json and merges.txt, 49408 tokens) by
 * ldm_tokenize_bpe and ldm_tokenize; the encoding must be BOS ... EOS, at most 77 ids,
 * every id in the vocabulary.  The tokenizer's own files come from bundles too, so an
 * input starting with "CONFIG\n", "SPECIAL\n", "VOCAB\n" or "MERGES\n" is instead
 * tokenizer_config.json, special_tokens_map.json, vocab.json or merges.txt of a small
 * tokenizer (the 512 byte tokens, the first 400 merges and the special tokens of the
 * fixture), which is then built and used once.
 * A prompt is also read in AUTOMATIC1111's syntax (model/prompt.c): parsed, and tokenized
 * into chunks, each BOS, 75 ids, EOS with finite weights, at most LDM_MAX_PROMPT_CHUNKS;
 * a parse that fails must fail the tokenization too.
 */
#include <jansson.h>

#include "fuzz_util.h"
#include "model/prompt.h"
#include "model/tokenizer.h"

static ldm_tokenizer *full;
static int32_t n_vocab;
static char *mini_vocab, *mini_merges;
static size_t mini_vocab_len, mini_merges_len;

static void build_mini(const char *vocab, size_t vlen, const char *merges, size_t mlen) {
    json_t *v = json_loadb(vocab, vlen, 0, NULL), *keep = json_object();
    if (!v) fuzz_die("fixture vocab.json");
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        json_int_t id = json_integer_value(val);
        if (id < 512 || id >= 49406) json_object_set(keep, key, val);
    }
    /* the first merges and the tokens they make */
    size_t pos = 0, end;
    int lines = 0;
    while (pos < mlen && lines < 401) {
        for (end = pos; end < mlen && merges[end] != '\n'; end++) {}
        char line[256];
        size_t n = end - pos < sizeof line - 1 ? end - pos : sizeof line - 1;
        memcpy(line, merges + pos, n);
        line[n] = '\0';
        if (lines > 0) {   /* line 0 is "#version" */
            char *sp = strchr(line, ' ');
            if (sp) {
                memmove(sp, sp + 1, strlen(sp));
                json_t *id = json_object_get(v, line);
                if (id) json_object_set(keep, line, id);
            }
        }
        lines++;
        pos = end + 1;
    }
    mini_merges_len = pos < mlen ? pos : mlen;
    mini_merges = malloc(mini_merges_len + 1);
    memcpy(mini_merges, merges, mini_merges_len);
    mini_merges[mini_merges_len] = '\0';
    mini_vocab = json_dumps(keep, JSON_COMPACT);
    mini_vocab_len = strlen(mini_vocab);
    json_decref(keep);
    json_decref(v);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    size_t vlen, mlen;
    char *vocab = ldm_read_file("tests/fixtures/clip/vocab.json", &vlen);
    char *merges = ldm_read_file("tests/fixtures/clip/merges.txt", &mlen);
    if (!vocab || !merges) fuzz_die("run from the repository root: tests/fixtures/clip/ missing");
    full = ldm_tokenizer_new(vocab, vlen, merges, mlen, NULL, NULL);
    if (!full) fuzz_die(ldm_last_error());
    json_t *v = json_loadb(vocab, vlen, 0, NULL);
    n_vocab = (int32_t)json_object_size(v);
    json_decref(v);
    build_mini(vocab, vlen, merges, mlen);
    ldm_tokenizer *mini = ldm_tokenizer_new(mini_vocab, mini_vocab_len, mini_merges, mini_merges_len, NULL, NULL);
    if (!mini) fuzz_die(ldm_last_error());
    ldm_tokenizer_free(mini);
    free(vocab);
    free(merges);
    return 0;
}

static void use(const ldm_tokenizer *tok, const char *text, int32_t vocab_size) {
    int32_t ids[77], bpe[256];
    ldm_tokenizer_info info = ldm_tokenizer_get_info(tok);
    int n = ldm_tokenize_bpe(tok, text, bpe, 256);
    for (int i = 0; i < n && i < 256; i++)
        if (bpe[i] < 0 || bpe[i] >= vocab_size) fuzz_die("BPE id outside the vocabulary");
    int trunc = 0;
    int m = ldm_tokenize(tok, text, ids, 77, &trunc);
    if (m < 0) {
        if (n >= 0) fuzz_die("ldm_tokenize failed where ldm_tokenize_bpe did not");
        return;
    }
    if (m < 2 || m > 77 || ids[0] != info.bos || ids[m - 1] != info.eos)
        fuzz_die("encoding is not BOS ... EOS within 77 ids");
    if (!trunc && m != n + 2) fuzz_die("untruncated encoding is not BOS + BPE + EOS");
    if (trunc != (n + 2 > 77)) fuzz_die("truncation flag wrong");
    for (int i = 0; i < 77; i++)
        if (ids[i] < 0 || ids[i] >= vocab_size) fuzz_die("id outside the vocabulary");
    for (int i = m; i < 77; i++)
        if (ids[i] != info.pad) fuzz_die("padding is not the pad id");
}

static void use_a1111(const ldm_tokenizer *tok, const char *text, int32_t vocab_size) {
    ldm_prompt_span *sp;
    int ns, parsed = ldm_prompt_parse(text, &sp, &ns) == 0;
    if (parsed) {
        if (ns < 1) fuzz_die("parse gave no span");
        for (int i = 0; i < ns; i++)
            if (!sp[i].text) fuzz_die("span without text");
        ldm_prompt_spans_free(sp, ns);
    }
    ldm_prompt_tokens pt;
    if (ldm_prompt_tokenize(tok, text, LDM_SYNTAX_A1111, &pt) != 0) return;
    if (!parsed) fuzz_die("tokenized a prompt the parser refused");
    ldm_tokenizer_info info = ldm_tokenizer_get_info(tok);
    if (pt.n_chunks < 1 || pt.n_chunks > LDM_MAX_PROMPT_CHUNKS || pt.T != 77) fuzz_die("chunk count or length");
    for (int c = 0; c < pt.n_chunks; c++) {
        const int32_t *id = pt.ids + (size_t)c * pt.T;
        const float *w = pt.weights + (size_t)c * pt.T;
        if (id[0] != info.bos || w[0] != 1.0f || w[pt.T - 1] != 1.0f || pt.chunk_tokens[c] < 0 ||
            pt.chunk_tokens[c] > pt.T - 2)
            fuzz_die("chunk is not BOS ... with weight 1 at both ends");
        for (int k = 0; k < pt.T; k++) {
            if (id[k] < 0 || id[k] >= vocab_size) fuzz_die("chunk id outside the vocabulary");
            if (!(w[k] == w[k]) || w[k] - w[k] != 0.0f) fuzz_die("weight not finite");
            if (k > pt.chunk_tokens[c] && (id[k] != info.eos || w[k] != 1.0f)) fuzz_die("padding is not EOS, weight 1");
        }
    }
    ldm_prompt_tokens_free(&pt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *vocab = mini_vocab, *merges = mini_merges, *config = NULL, *special = NULL;
    size_t vlen = mini_vocab_len, mlen = mini_merges_len;
    char *s;
    if (fuzz_mode(&data, &size, "CONFIG\n")) config = s = fuzz_str(data, size);
    else if (fuzz_mode(&data, &size, "SPECIAL\n")) special = s = fuzz_str(data, size);
    else if (fuzz_mode(&data, &size, "VOCAB\n")) { vocab = s = fuzz_str(data, size); vlen = size; }
    else if (fuzz_mode(&data, &size, "MERGES\n")) { merges = s = fuzz_str(data, size); mlen = size; }
    else {
        s = fuzz_str(data, size);
        use(full, s, n_vocab);
        use_a1111(full, s, n_vocab);
        free(s);
        return 0;
    }
    ldm_tokenizer *tok = ldm_tokenizer_new(vocab, vlen, merges, mlen, config, special);
    if (tok) {
        use(tok, "a photo of an astronaut, riding a horse!! <|endoftext|> caf\xc3\xa9 \xf0\x9f\x8d\x8e", INT32_MAX);
        ldm_tokenizer_free(tok);
    }
    free(s);
    return 0;
}
