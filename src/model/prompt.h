/* prompt.h - prompt syntaxes: how the text of a prompt becomes the text encoder's input.
 *
 *   plain   the text as it is (diffusers' StableDiffusionPipeline): one sequence of T ids
 *           (BOS, the tokens, EOS, padding; T = 77), the tokens past T - 2 dropped;
 *   a1111   AUTOMATIC1111's syntax, as modules/prompt_parser.py (parse_prompt_attention)
 *           and modules/sd_hijack_clip.py (tokenize_line, process_tokens) of
 *           stable-diffusion-webui do it, with its default settings (emphasis "Original",
 *           comma_padding_backtrack 20):
 *             (text) multiplies the weight of its tokens by 1.1, [text] divides it by 1.1,
 *             (text:1.3) multiplies it by 1.3; nesting multiplies; \( \) \[ \] \\ are the
 *             characters themselves; a ( or [ left open applies to the end of the text, a
 *             ) or ] with nothing open is text; the weight of a token is the weight of the
 *             span of text it came from (each span is tokenized on its own);
 *             the tokens are cut into chunks of T - 2 = 75, each encoded as BOS + 75 +
 *             EOS (a short last chunk padded with EOS, weight 1); when a chunk is full and
 *             the next token is not a comma, the tokens after the last comma of the chunk
 *             move to the next chunk if that comma is one of the last 20; BREAK (a word
 *             of its own, outside brackets) starts a new chunk; an empty text is one chunk;
 *             with a tokenizer whose pad token is not EOS (SD 2.x) every id after a
 *             chunk's first EOS becomes the pad id.
 *           The chunks' embeddings are concatenated along the token axis; each chunk's
 *           embedding z[T, C] is weighted as A1111's "Original" emphasis does
 *           (ldm_prompt_emphasis).
 * Weights are computed in double, in A1111's order of operations, and converted to float
 * for the multiplication as torch.asarray does.  A weight A1111 cannot parse as a number
 * (A1111 stops with a Python ValueError) is a usage error here, and so is a token weight
 * that is not a finite float (A1111 would go on and produce NaN).
 */
#ifndef LDM_PROMPT_H
#define LDM_PROMPT_H

#include <stdint.h>

#include "model/tokenizer.h"

typedef enum { LDM_SYNTAX_PLAIN = 0, LDM_SYNTAX_A1111 = 1 } ldm_prompt_syntax;

/* The most chunks a prompt may have: 32 chunks are 2400 tokens, far past any prompt
 * written by hand (A1111 users rarely go past 4-6), while the UNet's cross-attention
 * context (77 x chunks tokens, for prompt and negative prompt) stays bounded: at 32 chunks
 * an SD 1.x attention map of the 64x64 latent level is 4096 x 2464 per head. */
#define LDM_MAX_PROMPT_CHUNKS 32

/* "plain", "a1111"; LDM_SYNTAX_* from such a name, or -1. */
const char *ldm_prompt_syntax_name(int syntax);
int ldm_prompt_syntax_from_name(const char *name);

/* A1111's parse_prompt_attention: text -> spans of (text, weight).  A BREAK is the span
 * ("BREAK", -1).  Runs of equal weight are merged; the empty text gives ("", 1).  0, or -1
 * with ldm_error (kind LDM_USAGE: invalid UTF-8, a weight that is not a number). */
typedef struct { char *text; double weight; } ldm_prompt_span;
int ldm_prompt_parse(const char *text, ldm_prompt_span **spans, int *n);
void ldm_prompt_spans_free(ldm_prompt_span *spans, int n);

/* The text encoder's input for a text. */
typedef struct ldm_prompt_tokens {
    int n_chunks, T;      /* n_chunks sequences of T ids (T = the tokenizer's max length) */
    int32_t *ids;         /* [n_chunks * T], as the text encoder gets them */
    float *weights;       /* [n_chunks * T] (all 1 in plain syntax) */
    int *chunk_tokens;    /* [n_chunks] the text's tokens in each chunk (after BOS) */
    int token_count;      /* a1111: A1111's count (75 per chunk but the last, which counts
                             its tokens); plain: the tokens of the text (before truncation) */
    int truncated;        /* plain: tokens were cut */
    int weighted;         /* some weight is not 1 */
} ldm_prompt_tokens;
/* Tokenize text in a syntax (LDM_SYNTAX_*).  0, or -1 with ldm_error: invalid UTF-8, a bad
 * weight, a weight that is not finite, more than LDM_MAX_PROMPT_CHUNKS chunks (LDM_USAGE). */
int ldm_prompt_tokenize(const ldm_tokenizer *tok, const char *text, int syntax,
                        ldm_prompt_tokens *out);
void ldm_prompt_tokens_free(ldm_prompt_tokens *t);

/* A1111's "Original" emphasis on one chunk's embedding z[T, C] with token weights w[T]:
 * m0 = mean(z); z *= w (per token); z *= m0 / mean(z).  With every weight 1 z is left as
 * it is (as A1111's arithmetic leaves it).  0, or -1 when the result is not finite (no
 * message set: the caller names the prompt). */
int ldm_prompt_emphasis(float *z, const float *w, int T, int C);

#endif
