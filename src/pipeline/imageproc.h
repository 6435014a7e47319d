/* imageproc.h - diffusers' VaeImageProcessor.preprocess for one RGB picture.
 *
 * The size is the picture's own, or the requested width/height, rounded down to a
 * multiple of the VAE factor (get_default_height_width); when that differs from the
 * picture's size it is resized with PIL's Lanczos filter (Image.resize(..., LANCZOS),
 * reproduced exactly: two separable passes with PIL's fixed-point 8-bit coefficients);
 * then x / 255 * 2 - 1 in float32, as [3, H, W].
 */
#ifndef LDM_IMAGEPROC_H
#define LDM_IMAGEPROC_H

#include <stdint.h>

/* PIL Image.resize(size, Image.LANCZOS) of an 8-bit RGB picture.  *out malloc'd. */
void ldm_resize_lanczos(const uint8_t *rgb, int w, int h, int ow, int oh, uint8_t **out);

/* want_w/want_h: 0 = the picture's size.  *out [3, *oh, *ow] malloc'd.  -1 with a usage
 * error when the rounded size is below one multiple. */
int ldm_image_preprocess(const uint8_t *rgb, int w, int h, int want_w, int want_h, int mult,
                         float **out, int *ow, int *oh);

/* diffusers' mask processor (VaeImageProcessor(do_normalize=False, do_binarize=True,
 * do_convert_grayscale=True)): the picture resized to W x H (PIL Lanczos, in RGB, before
 * the conversion, as diffusers orders it), converted to grey as PIL's convert("L") does,
 * then 1 where grey / 255 >= 0.5 (grey >= 128), else 0.  *out [H, W] malloc'd. */
int ldm_mask_preprocess(const uint8_t *rgb, int w, int h, int W, int H, float **out);

#endif
