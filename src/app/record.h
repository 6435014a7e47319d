/* record.h - one generation, described once.
 *
 * LDM_RECORD_FIELDS is the one list of what a generation is.  From it come:
 *   - the struct ldm_gen_record (every string owned, malloc'd, freed by ldm_record_free);
 *   - the PNG "ldm" chunk (fields marked P: everything replay needs, nothing that
 *     depends on where the files are, so a replay gives the same bytes), its encoder
 *     and its decoder with the range checks (ldm_record_png_json / ldm_record_parse_png);
 *   - the history row: the columns of table generations (fields marked H), bound on
 *     insert (H, not O: what is known when the run starts) and on finish (O), and read
 *     back (app/db.c);
 *   - `ldmgen history --json` and `ldmgen show` (ldm_record_json: every H field);
 *   - the replay job (app/job.c ldm_job_from_record: P fields -> parameters).
 * A new parameter is one line here (plus its column in a schema/ migration when it is
 * H).  The AUTOMATIC1111 "parameters" text is written by hand (pipeline/pipeline.c
 * ldm_a1111_parameters): its format is A1111's, not ours.
 *
 * X(type, name, views, lo, hi)
 *   type  STR  text, never NULL ("" when unset)      OSTR text or NULL (SQL NULL, JSON null)
 *         U64  uint64, as a decimal string in JSON and SQL (beyond JSON's safe integers;
 *              SQL compares it numerically through the seed_num column, see db.c)
 *         INT  int in [lo, hi]          DBL  finite double in [lo, hi]
 *         BOOL 0/1 (JSON true/false)    ID   int64, 0 = none (SQL NULL, JSON null)
 *         GRID a guidance-by-steps grid spec (PNG only)
 *   views P = "ldm" PNG chunk, H = history column, O = written when the run ends,
 *         R = read-only column (set by the database), A = may be absent from a PNG chunk
 *         (fields added after images were made: absent reads as 0 / NULL)
 */
#ifndef LDM_RECORD_H
#define LDM_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define LDM_GRID_MAX 16   /* values per grid axis */

typedef struct ldm_grid_spec {
    int rows, cols;                   /* 0: not a grid */
    double guidance[LDM_GRID_MAX];    /* per row */
    int steps[LDM_GRID_MAX];          /* per column */
} ldm_grid_spec;

enum { LDM_V_P = 1, LDM_V_H = 2, LDM_V_O = 4, LDM_V_R = 8, LDM_V_A = 16 };
#define LDM_RECORD_FIELDS(X)                                                          \
    X(ID, id, LDM_V_H | LDM_V_R, 0, 0)                                                \
    X(STR, uuid, LDM_V_H, 0, 0)                                                       \
    X(ID, grid_id, LDM_V_H, 0, 0)                                                     \
    X(STR, created_at, LDM_V_H | LDM_V_R, 0, 0)                                       \
    X(OSTR, finished_at, LDM_V_H | LDM_V_R, 0, 0)                                     \
    X(STR, status, LDM_V_H | LDM_V_O, 0, 0)                                           \
    X(OSTR, error, LDM_V_H | LDM_V_O, 0, 0)                                           \
    X(STR, ldm_version, LDM_V_P | LDM_V_H, 0, 0)                                      \
    X(STR, bundle_hash, LDM_V_P | LDM_V_H, 0, 0)                                      \
    X(STR, bundle_path, LDM_V_H, 0, 0)                                                \
    X(STR, model_name, LDM_V_P, 0, 0)                                                \
    X(STR, prompt, LDM_V_P | LDM_V_H, 0, 0)                                           \
    X(STR, negative_prompt, LDM_V_P | LDM_V_H, 0, 0)                                  \
    X(U64, seed, LDM_V_P | LDM_V_H, 0, 0)                                             \
    X(INT, steps, LDM_V_P | LDM_V_H, 1, 1000)                                         \
    X(DBL, guidance, LDM_V_P | LDM_V_H, 0, 100)                                       \
    X(STR, scheduler, LDM_V_P | LDM_V_H, 0, 0)                                        \
    X(BOOL, karras, LDM_V_P | LDM_V_H, 0, 1)                                          \
    X(DBL, eta, LDM_V_P | LDM_V_H, 0, 1)                                              \
    X(OSTR, timestep_spacing, LDM_V_P | LDM_V_H, 0, 0)                                \
    X(OSTR, final_sigmas, LDM_V_P | LDM_V_H, 0, 0)                                    \
    X(INT, width, LDM_V_P | LDM_V_H, 8, 8192)                                         \
    X(INT, height, LDM_V_P | LDM_V_H, 8, 8192)                                        \
    X(INT, clip_skip, LDM_V_P | LDM_V_H, 1, 12)                                       \
    X(STR, prompt_syntax, LDM_V_P | LDM_V_H | LDM_V_A, 0, 0)                          \
    X(INT, batch_size, LDM_V_P | LDM_V_H, 1, 64)                                      \
    X(INT, batch_index, LDM_V_P | LDM_V_H, 0, 63)                                     \
    X(DBL, strength, LDM_V_P | LDM_V_H | LDM_V_A, 0, 1)                              \
    X(OSTR, init_image_sha256, LDM_V_P | LDM_V_H, 0, 0)                              \
    X(OSTR, init_image, LDM_V_H, 0, 0)                                               \
    X(OSTR, mask_sha256, LDM_V_P | LDM_V_H, 0, 0)                                    \
    X(OSTR, mask_image, LDM_V_H, 0, 0)                                               \
    X(GRID, grid, LDM_V_P, 0, 0)                                                      \
    X(ID, replay_of, LDM_V_H, 0, 0)                                                   \
    X(OSTR, prompt_file, LDM_V_H, 0, 0)                                               \
    X(ID, prompt_line, LDM_V_H, 0, 0)                                                 \
    X(STR, backend, LDM_V_H, 0, 0)                                                    \
    X(STR, precision, LDM_V_P | LDM_V_H | LDM_V_A, 0, 0)                              \
    X(OSTR, isa, LDM_V_P | LDM_V_H | LDM_V_A, 0, 0)                                   \
    X(OSTR, output_path, LDM_V_H | LDM_V_O, 0, 0)                                     \
    X(OSTR, png_sha256, LDM_V_H | LDM_V_O, 0, 0)                                      \
    X(DBL, t_text_ms, LDM_V_H | LDM_V_O, 0, 1e12)                                     \
    X(DBL, t_sampling_ms, LDM_V_H | LDM_V_O, 0, 1e12)                                 \
    X(DBL, t_decode_ms, LDM_V_H | LDM_V_O, 0, 1e12)                                   \
    X(DBL, t_total_ms, LDM_V_H | LDM_V_O, 0, 1e12)                                    \
    X(ID, pid, LDM_V_H, 0, 0)                                                         \
    X(OSTR, host, LDM_V_H, 0, 0)

#define LDM_REC_CT_STR char *
#define LDM_REC_CT_OSTR char *
#define LDM_REC_CT_U64 uint64_t
#define LDM_REC_CT_INT int
#define LDM_REC_CT_DBL double
#define LDM_REC_CT_BOOL int
#define LDM_REC_CT_ID int64_t
#define LDM_REC_CT_GRID ldm_grid_spec

typedef struct ldm_gen_record {
#define LDM_X(type, name, views, lo, hi) LDM_REC_CT_##type name;
    LDM_RECORD_FIELDS(LDM_X)
#undef LDM_X
} ldm_gen_record;

/* The field table, for code that walks the fields (db.c, tests). */
typedef enum { LDM_FT_STR, LDM_FT_OSTR, LDM_FT_U64, LDM_FT_INT, LDM_FT_DBL, LDM_FT_BOOL,
               LDM_FT_ID, LDM_FT_GRID } ldm_field_type;
typedef struct ldm_field {
    const char *name;
    ldm_field_type type;
    int views;
    double lo, hi;
    size_t offset;
} ldm_field;
extern const ldm_field ldm_record_fields[];
extern const int ldm_record_field_count;

/* A record with every string "" or NULL as its type says, numbers 0, batch_size 1,
 * clip_skip 1, status "running", ldm_version this version. */
void ldm_record_init(ldm_gen_record *r);
void ldm_record_free(ldm_gen_record *r);
/* A deep copy. */
void ldm_record_copy(ldm_gen_record *dst, const ldm_gen_record *src);
/* Replace an owned string field (s may be NULL: "" for STR fields, NULL for OSTR). */
void ldm_record_set(char **field, const char *s);

/* The "ldm" PNG chunk: the P fields as one JSON line, ASCII only.  malloc'd. */
char *ldm_record_png_json(const ldm_gen_record *r);
/* Parse an "ldm" chunk into r (initialised here): every P field must be present with
 * its type and within its range; `where` names the chunk in errors (kind LDM_DATA).
 * Unknown keys are ignored (a newer ldm may add fields; replay then says so). */
int ldm_record_parse_png(const char *json, const char *where, ldm_gen_record *r);
/* Every history field (H) as one JSON object line (history --json, show).  Strings that are not
 * valid UTF-8 are shown with U+FFFD in place of each bad byte.  malloc'd. */
char *ldm_record_json(const ldm_gen_record *r);
/* The same object as "name value" lines for `ldmgen show`, control characters escaped
 * as \xNN.  malloc'd. */
char *ldm_record_text(const ldm_gen_record *r);

/* s with control characters (and bytes that are not valid UTF-8) escaped as \xNN, for
 * printing text that came from a file or a database on a terminal.  malloc'd. */
char *ldm_escape_controls(const char *s);

#endif
