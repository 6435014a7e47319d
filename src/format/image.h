/* image.h - input pictures for image to image and inpainting: PNG (8- and 16-bit,
 * gray, palette, RGB, with alpha) and JPEG (libjpeg-turbo; gray and RGB), as 8-bit RGB.
 *
 * Alpha is composited on white (AUTOMATIC1111 flattens an init image the same way);
 * 16-bit PNG samples keep their high byte (PIL reads them so).  The size is checked from
 * the header before any pixel is decoded: at most LDM_IMAGE_MAX_SIDE per side and
 * LDM_IMAGE_MAX_PIXELS in all.
 */
#ifndef LDM_IMAGE_H
#define LDM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#define LDM_IMAGE_MAX_SIDE 16384
#define LDM_IMAGE_MAX_PIXELS (1 << 26)

/* *rgb: [h][w][3], malloc'd.  0, or -1 with ldm_error naming the file (kind LDM_DATA for
 * a file that is not a usable image). */
int ldm_image_read(const char *path, uint8_t **rgb, int *w, int *h);
/* The same from bytes in memory; `name` is used in messages. */
int ldm_image_decode(const char *name, const void *data, size_t len, uint8_t **rgb, int *w,
                     int *h);

#endif
