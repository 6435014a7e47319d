/* tokenizer.h - the CLIP BPE tokenizer, equal to transformers' CLIPTokenizerFast.
 *
 * A prompt goes through the same stages as the Hugging Face fast tokenizer:
 *   1. added tokens that are not "normalized" (SD 2.x's pad "!") are cut out of the raw text;
 *   2. each remaining piece is normalized: NFC, every run of White_Space -> " ", lower case
 *      (per character, full mapping: no final-sigma rule);
 *   3. normalized added tokens (<|startoftext|>, <|endoftext|>) are cut out;
 *   4. the CLIP pattern 's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+ picks the
 *      words (whitespace is dropped); a tokenizer.json whose pattern starts with
 *      <\|startoftext\|>|<\|endoftext\|>| (as transformers 5 writes it) also makes each of
 *      those two strings one word;
 *   5. each word's UTF-8 bytes are mapped to GPT-2's printable byte alphabet, "</w>" is
 *      appended to the last symbol, and BPE merges are applied by rank.
 * The full encoding is BOS + ids + EOS, cut to max_len keeping EOS last, padded with the
 * pad token of tokenizer_config.json / special_tokens_map.json (read as transformers
 * 4.36 reads them: with "added_tokens_decoder" the config alone counts, otherwise
 * special_tokens_map.json overrides it).  SD 1.x pads with <|endoftext|>, SD 2.x with "!".
 *
 * The vocabulary and merges come from vocab.json + merges.txt (transformers 4 and older,
 * and every real SD checkpoint), or from tokenizer.json (all that transformers 5 writes):
 * model.vocab, model.merges ("a b" strings or ["a", "b"] pairs), and, when the config
 * has no added_tokens_decoder, the added tokens of its "added_tokens" list; special
 * tokens named by plain strings are then special, not normalized (transformers 5 rules).
 */
#ifndef LDM_TOKENIZER_H
#define LDM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct ldm_tokenizer ldm_tokenizer;

/* The tokenizer files, as texts (JSON texts NUL-terminated).  vocab.json + merges.txt
 * are used when both are given, else tokenizer.json; tokenizer_config.json and
 * special_tokens_map.json are optional (NULL).  `dir` is the folder errors name the
 * files in ("DIR/tokenizer.json: field model.vocab: ..."); NULL = "tokenizer", the
 * bundle's member folder. */
typedef struct ldm_tokenizer_files {
    const char *vocab_json;
    size_t vocab_len;
    const char *merges;
    size_t merges_len;
    const char *tokenizer_json;
    size_t tokenizer_json_len;
    const char *config_json, *special_json;
    const char *dir;
} ldm_tokenizer_files;

/* NULL + ldm_error (naming the file and field) on failure. */
ldm_tokenizer *ldm_tokenizer_load(const ldm_tokenizer_files *files);

/* vocab.json and merges.txt texts, and the optional tokenizer_config.json /
 * special_tokens_map.json texts (NULL when absent).  NULL + ldm_error on failure. */
ldm_tokenizer *ldm_tokenizer_new(const char *vocab_json, size_t vocab_len, const char *merges,
                                 size_t merges_len, const char *tokenizer_config_json,
                                 const char *special_tokens_json);
void ldm_tokenizer_free(ldm_tokenizer *tok);

/* BPE ids of text without BOS/EOS.  Returns the count (may exceed cap: only cap ids are
 * written), or -1 with ldm_error (invalid UTF-8). */
int ldm_tokenize_bpe(const ldm_tokenizer *tok, const char *text, int32_t *ids, int cap);

/* Full encoding into ids[max_len]: BOS + ids + EOS, truncated to max_len keeping EOS at
 * the end, then padded.  *truncated (may be NULL) is set to 1 when ids were cut.  Returns
 * the number of ids before padding (<= max_len), or -1 with ldm_error. */
int ldm_tokenize(const ldm_tokenizer *tok, const char *text, int32_t *ids, int max_len,
                 int *truncated);

/* Special token ids and model_max_length (77 when the config does not say). */
typedef struct {
    int32_t bos, eos, pad, unk;
    int max_length;
} ldm_tokenizer_info;
ldm_tokenizer_info ldm_tokenizer_get_info(const ldm_tokenizer *tok);

/* The id of a vocabulary token (",</w>"), or -1 when the vocabulary has none. */
int32_t ldm_tokenizer_token_id(const ldm_tokenizer *tok, const char *token);
/* The text of token `id` for people: a vocabulary token's byte-level symbols turned back
 * into the UTF-8 bytes they stand for, with its "</w>" (end of word) kept ("photo</w>");
 * an added token's content; NULL for an id no token has.  A token may hold part of a
 * character's bytes only.  malloc'd. */
char *ldm_tokenizer_token_text(const ldm_tokenizer *tok, int32_t id);

#endif
