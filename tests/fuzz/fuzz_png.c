/* fuzz_png.c - libFuzzer harness for the PNG reader (format/png_io.c, ldm_png_decode).
 *
 * The input is any bytes.  A PNG that decodes (and is small) is written again with its
 * own texts by ldm_png_encode, and that must decode to the same pixels and texts.
 */
#include "fuzz_util.h"
#include "format/png_io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *rgb = NULL;
    int w = 0, h = 0, nt = 0;
    ldm_png_text *texts = NULL;
    if (ldm_png_decode(data, size, &rgb, &w, &h, size % 2 ? &texts : NULL, &nt) != 0) {
        if (rgb || texts) fuzz_die("outputs set after a failed decode");
        return 0;
    }
    if (w < 1 || h < 1 || !rgb) fuzz_die("decoded an empty image");
    for (size_t i = 0; i < (size_t)w * h * 3; i++) fuzz_sink += rgb[i];
    if ((size_t)w * h <= 4096) {
        uint8_t *png = NULL, *rgb2 = NULL;
        size_t len = 0;
        int w2, h2, nt2 = 0;
        ldm_png_text *t2 = NULL;
        if (ldm_png_encode(rgb, w, h, texts, nt, &png, &len) == 0) {
            if (ldm_png_decode(png, len, &rgb2, &w2, &h2, &t2, &nt2) != 0)
                fuzz_die("ldm_png_encode wrote a PNG that does not decode");
            if (w2 != w || h2 != h || memcmp(rgb, rgb2, (size_t)w * h * 3) != 0)
                fuzz_die("pixels changed in the round trip");
            if (nt2 != nt) fuzz_die("text count changed in the round trip");
            for (int i = 0; i < nt; i++)
                if (strcmp(texts[i].key, t2[i].key) || strcmp(texts[i].text, t2[i].text))
                    fuzz_die("a text changed in the round trip");
        }
        free(png);
        free(rgb2);
        ldm_png_texts_free(t2, nt2);
    }
    free(rgb);
    ldm_png_texts_free(texts, nt);
    return 0;
}
