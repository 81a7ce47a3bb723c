/* thumb.c -- see thumb.h. */
#include "thumb.h"

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct membuf {
    unsigned char *p;
    size_t len, cap;
    int oom;
} membuf;

static void write_mem(png_structp png, png_bytep data, png_size_t n)
{
    membuf *b = png_get_io_ptr(png);
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void flush_mem(png_structp png) { (void)png; }

int thumb_encode(const uint8_t *pixels, int width, int height, int channels, int scale, unsigned char **out,
               size_t *out_len, char *err, size_t errlen)
{
    if (!pixels || width <= 0 || height <= 0 || (channels != 1 && channels != 3) || scale < 1 || scale > 16 ||
        (long)width * scale > 16384 || (long)height * scale > 16384) {
        snprintf(err, errlen, "bad image arguments");
        return -1;
    }
    int W = width * scale, H = height * scale;
    membuf b = {0};
    png_bytep row = malloc((size_t)W * (size_t)channels);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!row || !png || !info) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (setjmp(png_jmpbuf(png))) {
        snprintf(err, errlen, "libpng failed to encode");
        goto fail;
    }
    png_set_write_fn(png, &b, write_mem, flush_mem);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    /* Scaled-up rows repeat: the Up filter makes every copy zeros, so the
     * fastest zlib level compresses them as well as the default one does --
     * libpng's adaptive filter choice and level 6 were a quarter of a loaded
     * daemon's time. */
    png_set_filter(png, PNG_FILTER_TYPE_BASE, scale > 1 ? PNG_FILTER_UP : PNG_FILTER_SUB);
    png_set_compression_level(png, 1);
    png_write_info(png, info);
    for (int y = 0; y < H; y++) {
        const uint8_t *src = pixels + (size_t)(y / scale) * (size_t)width * (size_t)channels;
        for (int x = 0; x < W; x++)
            memcpy(row + (size_t)x * (size_t)channels, src + (size_t)(x / scale) * (size_t)channels, (size_t)channels);
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    if (b.oom) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    png_destroy_write_struct(&png, &info);
    free(row);
    *out = b.p;
    *out_len = b.len;
    return 0;
fail:
    png_destroy_write_struct(&png, info ? &info : NULL);
    free(row);
    free(b.p);
    return -1;
}

/* The input's 8-bit pixels (HWC, 1 or 3 channels) into a malloc'd *px. */
static int input_pixels(const void *data, int dtype, int ndim, const int64_t *shape, uint8_t **px_out, int *w_out,
                        int *h_out, int *ch_out, char *err, size_t errlen)
{
    int64_t C = 1, H, W;
    if (!data || !shape || (dtype != 1 && dtype != 2)) {
        snprintf(err, errlen, "no picture of dtype %d", dtype);
        return -1;
    }
    if (ndim == 2) {
        H = shape[0];
        W = shape[1];
    } else if (ndim == 3) {
        C = shape[0];
        H = shape[1];
        W = shape[2];
    } else if (ndim == 1) {
        H = 1;
        W = shape[0];
    } else {
        snprintf(err, errlen, "inputs of rank %d have no picture", ndim);
        return -1;
    }
    if (H <= 0 || W <= 0 || C <= 0 || H > 4096 || W > 4096) {
        snprintf(err, errlen, "input of %lldx%lld is not a picture", (long long)H, (long long)W);
        return -1;
    }
    int channels = C == 3 ? 3 : 1;
    size_t plane = (size_t)(H * W);
    uint8_t *px = malloc(plane * (size_t)channels);
    if (!px) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* floats: min-max over the finite values; NaN shows black and +-inf
     * clamps, so no out-of-range float reaches a uint8_t conversion (UB) */
    double lo = INFINITY, hi = -INFINITY;
    if (dtype == 2) {
        const float *f = data;
        for (size_t i = 0; i < plane * (size_t)channels; i++) {
            if (!isfinite(f[i])) continue;
            if (f[i] < lo) lo = f[i];
            if (f[i] > hi) hi = f[i];
        }
    }
    for (int c = 0; c < channels; c++)
        for (size_t i = 0; i < plane; i++) {
            size_t src = (size_t)c * plane + i;
            uint8_t v;
            if (dtype == 1) {
                v = ((const uint8_t *)data)[src];
            } else {
                double x = ((const float *)data)[src];
                if (isnan(x)) v = 0;
                else if (!(hi > lo)) v = isinf(x) ? (x > 0 ? 255 : 0) : 128;
                else {
                    double t = (x - lo) / (hi - lo) * 255.0 + 0.5;
                    v = t <= 0 ? 0 : t >= 255 ? 255 : (uint8_t)t;
                }
            }
            px[i * (size_t)channels + (size_t)c] = v;
        }
    *px_out = px;
    *w_out = (int)W;
    *h_out = (int)H;
    *ch_out = channels;
    return 0;
}

static int scale_for(int w, int h, int max_side)
{
    int side = h > w ? h : w;
    int scale = side >= max_side ? 1 : max_side / side;
    return scale > 16 ? 16 : scale;
}

int thumb_from_input(const void *data, int dtype, int ndim, const int64_t *shape, int max_side, unsigned char **out,
                   size_t *out_len, char *err, size_t errlen)
{
    uint8_t *px;
    int W, H, channels;
    if (input_pixels(data, dtype, ndim, shape, &px, &W, &H, &channels, err, errlen) != 0) return -1;
    int rc = thumb_encode(px, W, H, channels, scale_for(W, H, max_side), out, out_len, err, errlen);
    free(px);
    return rc;
}

/* The jet colour map at h in [0, 1]: blue, cyan, yellow, red. */
static void jet(double h, uint8_t rgb[3])
{
    double r = 1.5 - fabs(4.0 * h - 3.0), g = 1.5 - fabs(4.0 * h - 2.0), b = 1.5 - fabs(4.0 * h - 1.0);
    double c[3] = {r, g, b};
    for (int i = 0; i < 3; i++) rgb[i] = (uint8_t)(255.0 * (c[i] < 0 ? 0 : c[i] > 1 ? 1 : c[i]) + 0.5);
}

/* map sampled at output pixel (ox, oy) of an ow x oh image: bilinear, pixel
 * centres aligned (as torch's interpolate with align_corners=False). */
static double sample(const double *map, int mw, int mh, int ox, int oy, int ow, int oh)
{
    double u = ((double)ox + 0.5) * mw / ow - 0.5, v = ((double)oy + 0.5) * mh / oh - 0.5;
    u = u < 0 ? 0 : u > mw - 1 ? mw - 1 : u;
    v = v < 0 ? 0 : v > mh - 1 ? mh - 1 : v;
    int x0 = (int)u, y0 = (int)v, x1 = x0 + 1 < mw ? x0 + 1 : x0, y1 = y0 + 1 < mh ? y0 + 1 : y0;
    double fx = u - x0, fy = v - y0;
    double a = map[(size_t)y0 * mw + x0] * (1 - fx) + map[(size_t)y0 * mw + x1] * fx;
    double b = map[(size_t)y1 * mw + x0] * (1 - fx) + map[(size_t)y1 * mw + x1] * fx;
    return a * (1 - fy) + b * fy;
}

int thumb_heatmap(const void *data, int dtype, int ndim, const int64_t *shape, const double *map, int mw, int mh,
                  int magnitude, double alpha, int max_side, unsigned char **out, size_t *out_len, char *err,
                  size_t errlen)
{
    if (!map || mw <= 0 || mh <= 0 || mw > 4096 || mh > 4096 || !(alpha >= 0 && alpha <= 1)) {
        snprintf(err, errlen, "bad heatmap arguments");
        return -1;
    }
    uint8_t *px, *rgb = NULL;
    int W, H, channels;
    if (input_pixels(data, dtype, ndim, shape, &px, &W, &H, &channels, err, errlen) != 0) return -1;
    int scale = scale_for(W, H, max_side), OW = W * scale, OH = H * scale;
    double top = 0;
    for (size_t i = 0; i < (size_t)mw * (size_t)mh; i++) {
        double v = magnitude ? fabs(map[i]) : map[i];
        if (isfinite(v) && v > top) top = v;
    }
    if (!(rgb = malloc((size_t)OW * (size_t)OH * 3))) {
        free(px);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int y = 0; y < OH; y++)
        for (int x = 0; x < OW; x++) {
            double v = sample(map, mw, mh, x, y, OW, OH);
            v = magnitude ? fabs(v) : v;
            double h = top > 0 && isfinite(v) && v > 0 ? v / top : 0;
            uint8_t c[3];
            jet(h > 1 ? 1 : h, c);
            const uint8_t *base = px + ((size_t)(y / scale) * (size_t)W + (size_t)(x / scale)) * (size_t)channels;
            uint8_t *o = rgb + ((size_t)y * (size_t)OW + (size_t)x) * 3;
            for (int k = 0; k < 3; k++)
                o[k] = (uint8_t)((1 - alpha) * base[channels == 3 ? k : 0] + alpha * c[k] + 0.5);
        }
    free(px);
    int rc = thumb_encode(rgb, OW, OH, 3, 1, out, out_len, err, errlen);
    free(rgb);
    return rc;
}
