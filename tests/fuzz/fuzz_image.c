/* fuzz_image.c - libFuzzer harness for the input-picture reader (format/image.c,
 * ldm_image_decode): the init images and masks of image to image and inpainting, PNG or
 * JPEG (libjpeg-turbo).
 *
 * The input is any bytes.  A picture that decodes must have a size within the limits of
 * image.h and every pixel readable; a failed decode must leave no output.
 */
#include "fuzz_util.h"
#include "format/image.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    if (ldm_image_decode("fuzz", data, size, &rgb, &w, &h) != 0) {
        if (rgb) fuzz_die("output set after a failed decode");
        return 0;
    }
    if (w < 1 || h < 1 || w > LDM_IMAGE_MAX_SIDE || h > LDM_IMAGE_MAX_SIDE ||
        (long long)w * h > LDM_IMAGE_MAX_PIXELS || !rgb)
        fuzz_die("decoded a size outside the limits");
    for (size_t i = 0; i < (size_t)w * h * 3; i++) fuzz_sink += rgb[i];
    free(rgb);
    return 0;
}
