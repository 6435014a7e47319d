/* outname.h - output file names: `-o` patterns with fields, file-name-safe prompt text,
 * and the numbered name a run takes when its name is already used.
 *
 * A pattern is a file name in which {field} is replaced:
 *   {index}  the entry's place in the prompt file, from 0 (--prompts only)
 *   {line}   its line number in the file, from 1 (--prompts only)
 *   {shard}  the shard number K of --shard K/N (--prompts only)
 *   {seed}   the seed (of the first image of a batch)
 *   {prompt} the prompt, made file-name safe and cut (see ldm_name_safe_text)
 *   {id}     the history id of the image's row (known once the row exists)
 * {field:0W} pads a number with zeros to W digits ({index:05} -> 00042); {prompt:N} cuts
 * the prompt to at most N bytes (default 60).  {{ and }} are literal braces.
 */
#ifndef LDM_OUTNAME_H
#define LDM_OUTNAME_H

#include <stddef.h>
#include <stdint.h>

typedef struct ldm_name_fields {
    int64_t index, line, shard; /* -1: not available */
    int has_seed;
    uint64_t seed;
    const char *prompt;         /* NULL: not available */
    int64_t id;                 /* 0: "{id...}" is kept as written, for a later pass */
} ldm_name_fields;

/* Every field unavailable. */
void ldm_name_fields_init(ldm_name_fields *f);

/* The pattern with its fields replaced.  When f->id is 0 the {id} fields and the
 * literal braces are kept as written, so the result is a pattern again.  A field that
 * is unknown, malformed or not available is an LDM_USAGE error naming it.
 * malloc'd, or NULL with the error. */
char *ldm_name_expand(const char *pattern, const ldm_name_fields *f);
/* 1 when the pattern uses field `name` ("id", "index", ...), else 0. */
int ldm_name_uses(const char *pattern, const char *name);
/* The syntax of a pattern only (every field known, braces closed): 0, or -1 with an
 * LDM_USAGE error. */
int ldm_name_check(const char *pattern);

/* s as part of a file name: letters, digits (any script), '-', '.' and '_' are kept,
 * anything else (spaces, '/', quotes, control characters, bytes that are not UTF-8)
 * becomes '_'; runs of '_' are one; no '_', '.' or '-' at either end; cut at a
 * character boundary to at most max_bytes.  "_" when nothing is left.  malloc'd. */
char *ldm_name_safe_text(const char *s, size_t max_bytes);

/* "dir/out.png", k -> "dir/out-k.png" (k >= 1; ".png" is added when missing: the name
 * is used as a stem, as ldm_output_name does).  malloc'd. */
char *ldm_name_numbered(const char *name, int k);
/* The highest k of the files "STEM-k.png" and "STEM-k-NNNN.png" (k without leading
 * zeros) in the folder of `name` (STEM is name without ".png"); 0 when there are none.
 * As AUTOMATIC1111 counts its outputs: the next name is one more than the highest. */
int ldm_name_highest_number(const char *name);

#endif
