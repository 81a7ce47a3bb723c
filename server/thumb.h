/* thumb.h -- PNG thumbnails of dataset inputs (libpng).
 *
 * The caller frees *out with free(). Errors return -1 with a message.
 */
#ifndef DE_THUMB_H
#define DE_THUMB_H

#include <stddef.h>
#include <stdint.h>

/* Encodes 8-bit pixels (channels 1 = gray, 3 = rgb, row-major HWC),
 * upscaled by `scale` (1..16) with nearest neighbour. */
int thumb_encode(const uint8_t *pixels, int width, int height, int channels, int scale, unsigned char **out,
               size_t *out_len, char *err, size_t errlen);

/* A thumbnail of one input: [H,W] or [1,H,W] gray, [3,H,W] rgb, other [C,H,W]
 * its first channel; dtype 1 = u8 as is, 2 = f32 min-max scaled to 0..255
 * (a constant image is mid gray). Upscaled so the longer side approaches
 * max_side (28x28 -> 112x112 at 112). */
int thumb_from_input(const void *data, int dtype, int ndim, const int64_t *shape, int max_side, unsigned char **out,
                   size_t *out_len, char *err, size_t errlen);

/* The input's thumbnail (as thumb_from_input) with map[mh][mw] over it in
 * the jet colours, blended by alpha (0..1), resampled bilinearly to the
 * thumbnail's size. magnitude: colour |v| (a signed map, e.g. a gradient),
 * else v where positive; scaled by the map's largest. */
int thumb_heatmap(const void *data, int dtype, int ndim, const int64_t *shape, const double *map, int mw, int mh,
                  int magnitude, double alpha, int max_side, unsigned char **out, size_t *out_len, char *err,
                  size_t errlen);

#endif
