/* fuzz_record.c - libFuzzer harness for the generation record read from a PNG's "ldm"
 * chunk (app/record.c ldm_record_parse_png, then app/job.c ldm_job_from_record): what
 * `ldmgen replay IMAGE.png` does with a file anyone can craft.
 *
 * The input is any bytes (as text).  A record that parses must turn into a replay job or
 * be refused with a message; written again (ldm_record_png_json) it must parse to the
 * same chunk text; its history JSON and text views must be valid.
 */
#include "fuzz_util.h"
#include "app/job.h"
#include "app/record.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1 << 16) return 0;
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    ldm_gen_record r;
    if (ldm_record_parse_png(text, "fuzz.png: ldm", &r) != 0) {
        if (!ldm_last_error()[0]) fuzz_die("refused without a message");
        free(text);
        return 0;
    }
    ldm_job j;
    ldm_job_init(&j);
    if (ldm_job_from_record(&r, &j) != LDM_OK && !ldm_last_error()[0])
        fuzz_die("job refused without a message");
    char *again = ldm_record_png_json(&r);
    ldm_gen_record r2;
    if (ldm_record_parse_png(again, "again", &r2) != 0) fuzz_die("a written record does not parse");
    char *again2 = ldm_record_png_json(&r2);
    if (strcmp(again, again2)) fuzz_die("record changed in the round trip");
    char *js = ldm_record_json(&r), *tx = ldm_record_text(&r);
    if (!js || !tx) fuzz_die("no JSON or text view");
    free(js); free(tx); free(again); free(again2);
    ldm_record_free(&r2);
    ldm_record_free(&r);
    free(text);
    return 0;
}
