/* grid.h - pictures around the generated images: the labelled guidance-by-steps grid
 * and the grayscale view of a latent (the seed paper's figures).
 *
 * All images are 8-bit RGB, rows top to bottom, malloc'd and owned by the caller.
 */
#ifndef LDM_GRID_H
#define LDM_GRID_H

#include <stdint.h>

#define LDM_GRID_MIN_CELL 128

/* Compose rows*cols cells of cw x ch pixels into one image with a title strip above
 * each cell (labels[r*cols + c], drawn with a small built-in bitmap font; characters
 * it lacks are drawn as '?').  Cells narrower than LDM_GRID_MIN_CELL pixels are
 * enlarged by a whole factor (nearest neighbour); a column is widened to its widest
 * title, the picture centred in it.  Returns 0 and sets *out, *width, *height. */
int ldm_grid_compose(const uint8_t *const *cells, int rows, int cols, int cw, int ch,
                     const char *const *labels, uint8_t **out, int *width, int *height);

/* A latent [C, h, w] averaged over channels, scaled min..max to 0..255 and enlarged
 * `scale` times with nearest-neighbour: a grayscale RGB image of (w*scale) x (h*scale). */
int ldm_latent_image(const float *latent, int C, int h, int w, int scale, uint8_t **out,
                     int *width, int *height);

/* Parse "--grid g=1,3,7.5" / "--grid n=10,25" values: axis is 'g' or 'n'; values are
 * written to vals (at most cap).  Returns the count or -1 with ldm_error naming the text. */
int ldm_grid_parse_axis(const char *spec, char *axis, double *vals, int cap);

#endif
