/* prompt.c - the plain and AUTOMATIC1111 prompt syntaxes (see prompt.h).
 *
 * The A1111 parser follows parse_prompt_attention step by step: its regular expression
 * re_attention picks one piece at each position (an escape, a bracket, ":N)" , a run of
 * text, a lone ":"), and re_break (\s*\bBREAK\b\s*) splits the pieces of text.  Both are
 * Python `re` patterns on str, so \s, \d and \b (\w) are Python's Unicode classes:
 *   \s  str.isspace(): U+0009..U+000D, U+001C..U+001F, U+0020, U+0085, U+00A0, U+1680,
 *       U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000;
 *   \d  general category Nd (and float() reads any such digit: a run of Nd characters is
 *       always the digits 0..9 in order, so a digit's value is its distance from the start
 *       of its run, mod 10);
 *   \w  letters (L*), numbers (N*) and "_".
 * Weights are doubles multiplied in the order A1111 multiplies them (each closing bracket
 * multiplies the spans since its opening one; the brackets left open multiply at the end,
 * the round ones first, each in order of opening).
 */
#include "model/prompt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/common.h"

const char *ldm_prompt_syntax_name(int syntax) {
    return syntax == LDM_SYNTAX_A1111 ? "a1111" : "plain";
}

int ldm_prompt_syntax_from_name(const char *name) {
    if (!strcmp(name, "a1111")) return LDM_SYNTAX_A1111;
    if (!strcmp(name, "plain")) return LDM_SYNTAX_PLAIN;
    return -1;
}

/* ---- Python's character classes ------------------------------------------------- */

static int py_space(int32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

static int py_digit(int32_t c) {
    if (c >= '0' && c <= '9') return 1;
    return c > 0x7f && utf8proc_category(c) == UTF8PROC_CATEGORY_ND;
}

static int digit_value(int32_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    int32_t first = c;
    while (first > 0 && utf8proc_category(first - 1) == UTF8PROC_CATEGORY_ND) first--;
    return (int)((c - first) % 10);
}

static int py_word(int32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

/* ---- parse_prompt_attention ---------------------------------------------------- */

static int is_one_of(int32_t c, const char *set) {
    for (; *set; set++)
        if (c == (unsigned char)*set) return 1;
    return 0;
}

typedef struct {
    const char *s;      /* the text */
    int32_t *cp;        /* its code points */
    size_t *off;        /* byte offset of code point i; off[n] = strlen(s) */
    int n;
    int *ws_end;        /* ws_end[i]: the end of the whitespace run starting at i */
    ldm_prompt_span *res;
    int n_res, cap_res;
} parser;

static void push_span(parser *p, const char *text, size_t len, double w) {
    if (p->n_res == p->cap_res) {
        p->cap_res = p->cap_res ? 2 * p->cap_res : 16;
        ldm_prompt_span *r = ldm_xmalloc(sizeof *r * (size_t)p->cap_res);
        if (p->n_res) memcpy(r, p->res, sizeof *r * (size_t)p->n_res);
        free(p->res);
        p->res = r;
    }
    char *t = ldm_xmalloc(len + 1);
    memcpy(t, text, len);
    t[len] = 0;
    p->res[p->n_res].text = t;
    p->res[p->n_res].weight = w;
    p->n_res++;
}

static void push_cps(parser *p, int a, int b, double w) {
    push_span(p, p->s + p->off[a], p->off[b] - p->off[a], w);
}

/* re_break at code point i of the piece [a, b): the match's end, or -1. */
static int break_at(const parser *p, int i, int a, int b) {
    int j = i < b && py_space(p->cp[i]) ? p->ws_end[i] : i;
    if (j > b) j = b;
    if (j + 5 > b) return -1;
    static const char BRK[] = "BREAK";
    for (int k = 0; k < 5; k++)
        if (p->cp[j + k] != BRK[k]) return -1;
    if (j > a && py_word(p->cp[j - 1])) return -1;         /* \b before B */
    if (j + 5 < b && py_word(p->cp[j + 5])) return -1;     /* \b after K */
    int e = j + 5;
    if (e < b && py_space(p->cp[e])) e = p->ws_end[e] < b ? p->ws_end[e] : b;
    return e;
}

/* The else branch: a piece of text [a, b) split by re_break, each BREAK a span of its own. */
static void text_piece(parser *p, int a, int b) {
    int start = a;
    for (int i = a; i < b;) {
        int e = break_at(p, i, a, b);
        if (e < 0) { i++; continue; }
        push_cps(p, start, i, 1.0);
        push_span(p, "BREAK", 5, -1.0);
        start = i = e;
    }
    push_cps(p, start, b, 1.0);
}

static void multiply_range(parser *p, int from, double m) {
    for (int k = from; k < p->n_res; k++) p->res[k].weight *= m;
}

/* ":" at i followed by \s*([+-]?[.\d]+)\s*\) : the end of the match, and the number's
 * code points [*n0, *n1); else -1. */
static int weight_at(const parser *p, int i, int *n0, int *n1) {
    int j = i + 1;
    if (j < p->n && py_space(p->cp[j])) j = p->ws_end[j];
    *n0 = j;
    if (j < p->n && (p->cp[j] == '+' || p->cp[j] == '-')) j++;
    int d = j;
    while (j < p->n && (p->cp[j] == '.' || py_digit(p->cp[j]))) j++;
    if (j == d) return -1;
    *n1 = j;
    if (j < p->n && py_space(p->cp[j])) j = p->ws_end[j];
    return j < p->n && p->cp[j] == ')' ? j + 1 : -1;
}

/* Python's float() of [+-]?[.\d]+: -1 when it is not a number (float raises ValueError). */
static int number_value(const parser *p, int a, int b, double *out) {
    char *buf = ldm_xmalloc((size_t)(b - a) + 1);
    int k = 0, digits = 0, dots = 0;
    for (int i = a; i < b; i++) {
        int32_t c = p->cp[i];
        if (c == '+' || c == '-' || c == '.') buf[k++] = (char)c;
        else { buf[k++] = (char)('0' + digit_value(c)); digits++; }
        dots += c == '.';
    }
    buf[k] = 0;
    int rc = -1;
    if (digits > 0 && dots <= 1) {
        *out = strtod(buf, NULL);   /* correctly rounded; overflow gives inf, as float() */
        rc = 0;
    }
    free(buf);
    return rc;
}

int ldm_prompt_parse(const char *text, ldm_prompt_span **spans, int *n_spans) {
    *spans = NULL;
    *n_spans = 0;
    parser P = {0}, *p = &P;
    p->s = text;
    size_t len = strlen(text);
    p->cp = ldm_xmalloc(sizeof *p->cp * (len + 1));
    p->off = ldm_xmalloc(sizeof *p->off * (len + 1));
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0 || c < 0) {
            free(p->cp);
            free(p->off);
            return ldm_error_kind(LDM_USAGE, "invalid UTF-8 at byte %zu (0x%02x)", i, (unsigned char)text[i]);
        }
        p->off[p->n] = i;
        p->cp[p->n++] = c;
        i += (size_t)k;
    }
    p->off[p->n] = len;
    p->ws_end = ldm_xmalloc(sizeof *p->ws_end * (size_t)(p->n + 1));
    p->ws_end[p->n] = p->n;
    for (int i = p->n - 1; i >= 0; i--) p->ws_end[i] = py_space(p->cp[i]) ? p->ws_end[i + 1] : i;
    int *round = ldm_xmalloc(sizeof(int) * (size_t)(p->n + 1)), n_round = 0;
    int *square = ldm_xmalloc(sizeof(int) * (size_t)(p->n + 1)), n_square = 0;
    int rc = 0;
    for (int i = 0; i < p->n && !rc;) {
        int32_t c = p->cp[i];
        if (c == '\\') {
            /* \( \) \[ \] \\ are the character; a backslash before anything else is dropped */
            if (i + 1 < p->n && is_one_of(p->cp[i + 1], "()[]\\")) {
                push_cps(p, i + 1, i + 2, 1.0);
                i += 2;
            } else {
                push_span(p, "", 0, 1.0);
                i++;
            }
        } else if (c == '(') {
            round[n_round++] = p->n_res;
            i++;
        } else if (c == '[') {
            square[n_square++] = p->n_res;
            i++;
        } else if (c == ':') {
            int n0, n1, e = weight_at(p, i, &n0, &n1);
            if (e < 0) {
                text_piece(p, i, i + 1);
                i++;
            } else if (n_round) {
                double w;
                if (number_value(p, n0, n1, &w)) {
                    rc = ldm_error_kind(LDM_USAGE, "the weight \"%.*s\" at byte %zu is not a number (to keep "
                                        "brackets as text, write \\( and \\))", (int)(p->off[n1] - p->off[n0]),
                                        text + p->off[n0], p->off[n0]);
                    break;
                }
                multiply_range(p, round[--n_round], w);
                i = e;
            } else {
                text_piece(p, i, e);
                i = e;
            }
        } else if (c == ')') {
            if (n_round) multiply_range(p, round[--n_round], 1.1);
            else text_piece(p, i, i + 1);
            i++;
        } else if (c == ']') {
            if (n_square) multiply_range(p, square[--n_square], 1 / 1.1);
            else text_piece(p, i, i + 1);
            i++;
        } else {
            int j = i;
            while (j < p->n && !is_one_of(p->cp[j], "\\()[]:")) j++;
            text_piece(p, i, j);
            i = j;
        }
    }
    if (!rc) {
        for (int k = 0; k < n_round; k++) multiply_range(p, round[k], 1.1);
        for (int k = 0; k < n_square; k++) multiply_range(p, square[k], 1 / 1.1);
        if (p->n_res == 0) push_span(p, "", 0, 1.0);
        /* merge runs of identical weights */
        for (int k = 0; k + 1 < p->n_res;) {
            if (p->res[k].weight == p->res[k + 1].weight) {
                size_t la = strlen(p->res[k].text), lb = strlen(p->res[k + 1].text);
                char *t = ldm_xmalloc(la + lb + 1);
                memcpy(t, p->res[k].text, la);
                memcpy(t + la, p->res[k + 1].text, lb + 1);
                free(p->res[k].text);
                free(p->res[k + 1].text);
                p->res[k].text = t;
                memmove(p->res + k + 1, p->res + k + 2, sizeof *p->res * (size_t)(p->n_res - k - 2));
                p->n_res--;
            } else {
                k++;
            }
        }
    }
    free(round);
    free(square);
    free(p->cp);
    free(p->off);
    free(p->ws_end);
    if (rc) {
        ldm_prompt_spans_free(p->res, p->n_res);
        return -1;
    }
    *spans = p->res;
    *n_spans = p->n_res;
    return 0;
}

void ldm_prompt_spans_free(ldm_prompt_span *spans, int n) {
    for (int i = 0; i < n; i++) free(spans[i].text);
    free(spans);
}

/* ---- tokenize_line ---------------------------------------------------------------- */

typedef struct {
    const ldm_tokenizer_info *ti;
    int L, T;                  /* chunk length (75), sequence length (77) */
    int32_t *ids;              /* [cap_chunks * T] */
    double *mult;
    int *counts;               /* [cap_chunks] tokens in each chunk */
    int n_chunks, cap_chunks;
    int32_t *cur;              /* [L] the chunk being filled (without BOS and EOS) */
    double *cur_w;
    int n_cur;
    int last_comma, token_count;
} chunker;

/* next_chunk: the current tokens, padded with EOS to L, between BOS and EOS. */
static int next_chunk(chunker *c, int is_last) {
    if (c->n_chunks == LDM_MAX_PROMPT_CHUNKS)
        return ldm_error_kind(LDM_USAGE, "more than %d chunks of %d tokens (A1111 syntax; at most %d tokens, "
                              "BREAK and the comma rule included)", LDM_MAX_PROMPT_CHUNKS, c->L,
                              LDM_MAX_PROMPT_CHUNKS * c->L);
    c->token_count += is_last ? c->n_cur : c->L;
    if (c->n_chunks == c->cap_chunks) {
        c->cap_chunks = c->cap_chunks ? 2 * c->cap_chunks : 2;
        int32_t *ids = ldm_xmalloc(sizeof *ids * (size_t)c->cap_chunks * c->T);
        double *m = ldm_xmalloc(sizeof *m * (size_t)c->cap_chunks * c->T);
        int *cn = ldm_xmalloc(sizeof *cn * (size_t)c->cap_chunks);
        if (c->n_chunks) {
            memcpy(ids, c->ids, sizeof *ids * (size_t)c->n_chunks * c->T);
            memcpy(m, c->mult, sizeof *m * (size_t)c->n_chunks * c->T);
            memcpy(cn, c->counts, sizeof *cn * (size_t)c->n_chunks);
        }
        free(c->ids);
        free(c->mult);
        free(c->counts);
        c->ids = ids;
        c->mult = m;
        c->counts = cn;
    }
    int32_t *id = c->ids + (size_t)c->n_chunks * c->T;
    double *w = c->mult + (size_t)c->n_chunks * c->T;
    id[0] = c->ti->bos;
    w[0] = 1.0;
    for (int k = 0; k < c->L; k++) {
        id[1 + k] = k < c->n_cur ? c->cur[k] : c->ti->eos;
        w[1 + k] = k < c->n_cur ? c->cur_w[k] : 1.0;
    }
    id[c->T - 1] = c->ti->eos;
    w[c->T - 1] = 1.0;
    c->counts[c->n_chunks] = c->n_cur;
    c->n_chunks++;
    c->last_comma = -1;
    c->n_cur = 0;
    return 0;
}

#define BACKTRACK 20   /* A1111's comma_padding_backtrack */

static int a1111_tokenize(const ldm_tokenizer *tok, const char *text, ldm_prompt_tokens *out) {
    ldm_prompt_span *sp;
    int n_sp;
    if (ldm_prompt_parse(text, &sp, &n_sp)) return -1;
    ldm_tokenizer_info ti = ldm_tokenizer_get_info(tok);
    chunker *c = ldm_xcalloc(1, sizeof *c);
    c->ti = &ti;
    c->T = ti.max_length;
    c->L = ti.max_length - 2;
    c->last_comma = -1;
    const int32_t comma = ldm_tokenizer_token_id(tok, ",</w>");
    int rc = 0;
    if (c->L < 1)
        rc = ldm_error_kind(LDM_DATA, "tokenizer: model_max_length %d leaves no room for tokens", ti.max_length);
    c->cur = ldm_xmalloc(sizeof *c->cur * (size_t)(c->L > 0 ? c->L : 1));
    c->cur_w = ldm_xmalloc(sizeof *c->cur_w * (size_t)(c->L > 0 ? c->L : 1));
    for (int s = 0; s < n_sp && !rc; s++) {
        if (!strcmp(sp[s].text, "BREAK") && sp[s].weight == -1) {
            rc = next_chunk(c, 0);
            continue;
        }
        int n = ldm_tokenize_bpe(tok, sp[s].text, NULL, 0);
        if (n < 0) { rc = -1; break; }
        int32_t *ids = ldm_xmalloc(sizeof *ids * (size_t)(n + 1));
        ldm_tokenize_bpe(tok, sp[s].text, ids, n);
        for (int k = 0; k < n && !rc; k++) {
            if (ids[k] == comma) {
                c->last_comma = c->n_cur;
            } else if (c->n_cur == c->L && c->last_comma != -1 && c->n_cur - c->last_comma <= BACKTRACK) {
                /* the tokens after the last comma move to the next chunk */
                int at = c->last_comma + 1, nr = c->n_cur - at;
                int32_t rid[BACKTRACK];
                double rw[BACKTRACK];
                memcpy(rid, c->cur + at, sizeof *rid * (size_t)nr);
                memcpy(rw, c->cur_w + at, sizeof *rw * (size_t)nr);
                c->n_cur = at;
                if ((rc = next_chunk(c, 0))) break;
                memcpy(c->cur, rid, sizeof *rid * (size_t)nr);
                memcpy(c->cur_w, rw, sizeof *rw * (size_t)nr);
                c->n_cur = nr;
            }
            if (c->n_cur == c->L && (rc = next_chunk(c, 0))) break;
            c->cur[c->n_cur] = ids[k];
            c->cur_w[c->n_cur++] = sp[s].weight;
        }
        free(ids);
    }
    if (!rc && (c->n_cur || !c->n_chunks)) rc = next_chunk(c, 1);
    if (!rc) {
        const size_t N = (size_t)c->n_chunks * c->T;
        out->n_chunks = c->n_chunks;
        out->T = c->T;
        out->ids = c->ids;
        out->chunk_tokens = c->counts;
        out->weights = ldm_xmalloc(sizeof(float) * N);
        out->token_count = c->token_count;
        for (size_t k = 0; k < N && !rc; k++) {
            float w = (float)c->mult[k];
            out->weights[k] = w;
            if (w != 1.0f) out->weighted = 1;
            if (!isfinite(w)) {
                /* name the span the token came from */
                const char *what = "?";
                for (int s = 0; s < n_sp; s++)
                    if ((float)sp[s].weight == w || (isnan(w) && isnan(sp[s].weight))) { what = sp[s].text; break; }
                rc = ldm_error_kind(LDM_USAGE, "the weight of \"%.60s\" is %g: not a finite number",
                                    what, c->mult[k]);
            }
        }
        /* SD 2.x: every id after a chunk's first EOS is the pad id (process_tokens) */
        if (ti.eos != ti.pad)
            for (int ch = 0; ch < c->n_chunks; ch++) {
                int32_t *id = out->ids + (size_t)ch * c->T;
                int k = 0;
                while (k < c->T && id[k] != ti.eos) k++;
                for (k++; k < c->T; k++) id[k] = ti.pad;
            }
        c->ids = NULL;
        c->counts = NULL;
    }
    free(c->ids);
    free(c->counts);
    free(c->mult);
    free(c->cur);
    free(c->cur_w);
    free(c);
    ldm_prompt_spans_free(sp, n_sp);
    return rc;
}

int ldm_prompt_tokenize(const ldm_tokenizer *tok, const char *text, int syntax,
                        ldm_prompt_tokens *out) {
    memset(out, 0, sizeof *out);
    if (syntax == LDM_SYNTAX_A1111) {
        if (a1111_tokenize(tok, text, out)) {
            ldm_prompt_tokens_free(out);
            return -1;
        }
        return 0;
    }
    const int T = ldm_tokenizer_get_info(tok).max_length;
    out->n_chunks = 1;
    out->T = T;
    out->ids = ldm_xmalloc(sizeof(int32_t) * (size_t)T);
    out->weights = ldm_xmalloc(sizeof(float) * (size_t)T);
    for (int k = 0; k < T; k++) out->weights[k] = 1.0f;
    int used = ldm_tokenize(tok, text, out->ids, T, &out->truncated);
    if (used < 0) {
        ldm_prompt_tokens_free(out);
        return -1;
    }
    out->token_count = out->truncated ? ldm_tokenize_bpe(tok, text, NULL, 0) : used - 2;
    out->chunk_tokens = ldm_xmalloc(sizeof(int));
    out->chunk_tokens[0] = used - 2;
    return 0;
}

void ldm_prompt_tokens_free(ldm_prompt_tokens *t) {
    if (!t) return;
    free(t->ids);
    free(t->weights);
    free(t->chunk_tokens);
    memset(t, 0, sizeof *t);
}

/* ---- emphasis ------------------------------------------------------------------ */

int ldm_prompt_emphasis(float *z, const float *w, int T, int C) {
    int all_one = 1;
    for (int t = 0; t < T; t++)
        if (w[t] != 1.0f) all_one = 0;
    if (all_one) return 0;
    const size_t N = (size_t)T * C;
    double s0 = 0, s1 = 0;
    for (size_t k = 0; k < N; k++) s0 += z[k];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            float *v = &z[(size_t)t * C + c];
            *v = *v * w[t];
            s1 += *v;
        }
    const float m0 = (float)(s0 / (double)N), m1 = (float)(s1 / (double)N);
    const float r = m0 / m1;
    int ok = isfinite(r);
    for (size_t k = 0; k < N; k++) {
        z[k] = z[k] * r;
        if (!isfinite(z[k])) ok = 0;
    }
    return ok ? 0 : -1;
}
