/* test_thumb.c -- PNG thumbnails (server/thumb.h): every PNG is decoded back
 * with libpng and compared pixel for pixel with an upscaling, CHW->HWC and
 * min-max mapping computed here from the input. */
#include <check.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thumb.h"

#define EXPECT(cond, ...)                                                            \
    do {                                                                             \
        if (!(cond))                                                                 \
            ck_abort_msg(__VA_ARGS__);                                               \
    } while (0)

static uint32_t rng_state;
static void rng_seed(uint32_t s) { rng_state = s * 2654435761u + 1; }
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

typedef struct {
    int w, h, ch;
    uint8_t *px; /* row-major HWC, as decoded */
} image;

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

/* Decodes png[len] with libpng into its own format (8-bit gray or RGB, the
 * only ones thumb writes), checking the raw header bytes on the way. */
static image decode(const unsigned char *png, size_t len)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    ck_assert_ptr_nonnull(png);
    ck_assert_uint_gt(len, 33);
    ck_assert_int_eq(memcmp(png, sig, 8), 0);
    ck_assert_int_eq(memcmp(png + 12, "IHDR", 4), 0);
    ck_assert_int_eq(png[24], 8); /* bit depth */
    ck_assert_msg(png[25] == 0 || png[25] == 2, "colour type %d", png[25]);
    ck_assert_int_eq(png[28], 0); /* not interlaced */

    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    ck_assert_msg(png_image_begin_read_from_memory(&im, png, len), "libpng: %s", im.message);
    ck_assert_uint_eq(im.width, be32(png + 16));
    ck_assert_uint_eq(im.height, be32(png + 20));
    image r = {(int)im.width, (int)im.height, png[25] == 2 ? 3 : 1, NULL};
    ck_assert_uint_eq(im.format, r.ch == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY);
    im.format = r.ch == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    r.px = malloc(PNG_IMAGE_SIZE(im));
    ck_assert_ptr_nonnull(r.px);
    ck_assert_msg(png_image_finish_read(&im, NULL, r.px, 0, NULL), "libpng: %s", im.message);
    png_image_free(&im);
    return r;
}

/* Asserts img is src (w x h x ch, HWC) upscaled by s with nearest neighbour:
 * every output pixel (x, y) is the source pixel (x / s, y / s). */
static void expect_upscaled(const image *img, const uint8_t *src, int w, int h, int ch, int s)
{
    ck_assert_int_eq(img->w, w * s);
    ck_assert_int_eq(img->h, h * s);
    ck_assert_int_eq(img->ch, ch);
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++)
            for (int c = 0; c < ch; c++) {
                uint8_t got = img->px[((size_t)y * img->w + x) * ch + c];
                uint8_t want = src[((size_t)(y / s) * w + x / s) * ch + c];
                EXPECT(got == want, "pixel (%d,%d) ch %d: %d != %d (scale %d)", x, y, c, got, want, s);
            }
}

static void encode_ok(const uint8_t *px, int w, int h, int ch, int s)
{
    unsigned char *png = NULL;
    size_t len = 0;
    char err[128] = "";
    ck_assert_msg(thumb_encode(px, w, h, ch, s, &png, &len, err, sizeof err) == 0, "encode %dx%dx%d s%d: %s", w, h,
                  ch, s, err);
    image img = decode(png, len);
    expect_upscaled(&img, px, w, h, ch, s);
    free(img.px);
    free(png);
}

static uint8_t *random_px(size_t n, uint32_t seed)
{
    uint8_t *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    rng_seed(seed);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rng_u32() >> 24);
    p[0] = 0; /* both extremes present */
    p[n - 1] = 255;
    return p;
}

START_TEST(test_encode_gray)
{
    uint8_t *px = random_px(7 * 5, 1);
    int scales[] = {1, 2, 3, 7, 16};
    for (int i = 0; i < 5; i++) encode_ok(px, 7, 5, 1, scales[i]);
    free(px);
}
END_TEST

START_TEST(test_encode_rgb)
{
    uint8_t *px = random_px(6 * 4 * 3, 2);
    int scales[] = {1, 2, 5, 16};
    for (int i = 0; i < 4; i++) encode_ok(px, 6, 4, 3, scales[i]);
    free(px);
}
END_TEST

START_TEST(test_encode_shapes)
{
    uint8_t one[3] = {10, 200, 77};
    encode_ok(one, 1, 1, 1, 1);
    encode_ok(one, 1, 1, 3, 16);
    uint8_t *row = random_px(300, 3);
    encode_ok(row, 300, 1, 1, 2); /* a single row */
    encode_ok(row, 1, 300, 1, 3); /* a single column */
    encode_ok(row, 100, 1, 3, 4);
    free(row);
    /* A larger, compressible image spans several output buffer growths. */
    uint8_t *big = malloc(256 * 200);
    for (int y = 0; y < 200; y++)
        for (int x = 0; x < 256; x++) big[y * 256 + x] = (uint8_t)(x ^ y);
    encode_ok(big, 256, 200, 1, 4);
    free(big);
}
END_TEST

static void encode_bad(const uint8_t *px, int w, int h, int ch, int s)
{
    unsigned char *png = NULL;
    size_t len = 12345;
    char err[128] = "";
    ck_assert_msg(thumb_encode(px, w, h, ch, s, &png, &len, err, sizeof err) == -1, "accepted %dx%dx%d s%d", w, h, ch,
                  s);
    ck_assert_ptr_null(png);
    ck_assert_uint_eq(len, 12345);
    ck_assert_msg(err[0] != '\0', "no message for %dx%dx%d s%d", w, h, ch, s);
}

START_TEST(test_encode_bad_args)
{
    uint8_t px[4 * 4 * 4] = {0};
    encode_bad(NULL, 4, 4, 1, 1);
    encode_bad(px, 0, 4, 1, 1);
    encode_bad(px, 4, 0, 1, 1);
    encode_bad(px, -1, 4, 1, 1);
    encode_bad(px, 4, -3, 3, 1);
    encode_bad(px, 4, 4, 0, 1);
    encode_bad(px, 4, 4, 2, 1);
    encode_bad(px, 4, 4, 4, 1);
    encode_bad(px, 4, 4, -1, 1);
    encode_bad(px, 4, 4, 1, 0);
    encode_bad(px, 4, 4, 1, -2);
    encode_bad(px, 4, 4, 3, 17);
}
END_TEST

/* ---- thumb_from_input ------------------------------------------------- */

/* Runs thumb_from_input and decodes the result. */
static image from_input(const void *data, int dtype, int ndim, const int64_t *shape, int max_side)
{
    unsigned char *png = NULL;
    size_t len = 0;
    char err[128] = "";
    ck_assert_msg(thumb_from_input(data, dtype, ndim, shape, max_side, &png, &len, err, sizeof err) == 0, "%s", err);
    image img = decode(png, len);
    free(png);
    return img;
}

/* The integer scale the header describes: the longer side times it
 * approaches max_side without passing it, within thumb_encode's 1..16. */
static int want_scale(int w, int h, int max_side)
{
    int side = w > h ? w : h;
    int s = max_side / side;
    return s < 1 ? 1 : s > 16 ? 16 : s;
}

START_TEST(test_u8_gray_shapes)
{
    const int H = 5, W = 9;
    uint8_t *px = random_px((size_t)H * W, 4);
    int64_t s2[2] = {H, W}, s3[3] = {1, H, W};
    image a = from_input(px, 1, 2, s2, 36);
    expect_upscaled(&a, px, W, H, 1, 4);
    image b = from_input(px, 1, 3, s3, 36);
    expect_upscaled(&b, px, W, H, 1, 4);
    free(a.px);
    free(b.px);
    /* The scale follows the longer side, here the height. */
    int64_t t[2] = {W, H};
    image c = from_input(px, 1, 2, t, 100);
    expect_upscaled(&c, px, H, W, 1, want_scale(H, W, 100));
    ck_assert_int_eq(c.h, 99); /* 9 * 11 */
    free(c.px);
    free(px);
}
END_TEST

START_TEST(test_scale_rule)
{
    uint8_t *px = random_px(64 * 64, 5);
    struct { int h, w, max_side, out_w, out_h; } cases[] = {
        {28, 28, 112, 112, 112}, /* the header's example */
        {28, 20, 112, 80, 112},  {30, 30, 112, 90, 90}, {28, 28, 28, 28, 28}, {64, 40, 32, 40, 64},
        {2, 2, 112, 32, 32},     /* capped at 16 */
        {3, 1, 0, 1, 3},         /* no room: as is */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t shape[2] = {cases[i].h, cases[i].w};
        image img = from_input(px, 1, 2, shape, cases[i].max_side);
        ck_assert_int_eq(img.w, cases[i].out_w);
        ck_assert_int_eq(img.h, cases[i].out_h);
        expect_upscaled(&img, px, cases[i].w, cases[i].h, 1, want_scale(cases[i].w, cases[i].h, cases[i].max_side));
        free(img.px);
    }
    free(px);
}
END_TEST

START_TEST(test_u8_rgb_chw)
{
    const int H = 4, W = 6;
    uint8_t *chw = random_px(3 * (size_t)H * W, 6);
    uint8_t hwc[3 * 4 * 6];
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < H * W; i++) hwc[i * 3 + c] = chw[c * H * W + i];
    int64_t shape[3] = {3, H, W};
    image img = from_input(chw, 1, 3, shape, 24);
    expect_upscaled(&img, hwc, W, H, 3, 4);
    free(img.px);
    free(chw);
}
END_TEST

START_TEST(test_u8_other_channels_first)
{
    const int H = 3, W = 5;
    int counts[] = {2, 4, 7};
    for (int k = 0; k < 3; k++) {
        int C = counts[k];
        uint8_t *chw = random_px((size_t)C * H * W, 7 + k);
        int64_t shape[3] = {C, H, W};
        image img = from_input(chw, 1, 3, shape, 10);
        expect_upscaled(&img, chw, W, H, 1, 2); /* the first plane */
        free(img.px);
        free(chw);
    }
}
END_TEST

/* Float inputs built so that the min-max mapping is exact: the range is a
 * power of two, so (v - lo) / (hi - lo) * 255 lands within rounding of k. */
static float level(float lo, float hi, int k) { return lo + (hi - lo) * (float)k / 255.0f; }

START_TEST(test_f32_gray_minmax)
{
    const int H = 6, W = 7;
    float lo[] = {-3.0f, 0.0f, 100.0f, -1024.0f}, hi[] = {5.0f, 1.0f, 116.0f, -512.0f};
    for (int r = 0; r < 4; r++) {
        float f[6 * 7];
        uint8_t want[6 * 7];
        rng_seed(20 + r);
        for (int i = 0; i < H * W; i++) {
            int k = (int)(rng_u32() % 256);
            if (i == 3) k = 0;
            if (i == 40) k = 255;
            f[i] = level(lo[r], hi[r], k);
            want[i] = (uint8_t)k;
        }
        int64_t s2[2] = {H, W}, s3[3] = {1, H, W};
        image a = from_input(f, 2, 2, s2, 21);
        expect_upscaled(&a, want, W, H, 1, 3);
        image b = from_input(f, 2, 3, s3, 21);
        expect_upscaled(&b, want, W, H, 1, 3);
        free(a.px);
        free(b.px);
    }
}
END_TEST

START_TEST(test_f32_rgb)
{
    /* Each channel holds both the minimum and the maximum, so the expectation
     * is the same whether the range is taken per channel or over the input. */
    const int H = 5, W = 4, P = 5 * 4;
    float f[3 * 5 * 4];
    uint8_t want[3 * 5 * 4];
    rng_seed(30);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < P; i++) {
            int k = i == c ? 0 : i == P - 1 - c ? 255 : (int)(rng_u32() % 256);
            f[c * P + i] = level(-2.0f, 2.0f, k);
            want[i * 3 + c] = (uint8_t)k;
        }
    int64_t shape[3] = {3, H, W};
    image img = from_input(f, 2, 3, shape, 16);
    expect_upscaled(&img, want, W, H, 3, 3);
    free(img.px);
}
END_TEST

START_TEST(test_f32_other_channels_first)
{
    /* Only the first channel is pictured; its own range maps to 0..255. */
    const int H = 2, W = 3, P = 6;
    float f[2 * 6];
    uint8_t want[6];
    for (int i = 0; i < P; i++) {
        int k = i * 51; /* 0, 51, ..., 255 */
        f[i] = level(0.0f, 4.0f, k);
        want[i] = (uint8_t)k;
        f[P + i] = 0.5f; /* second channel: inside the first one's range */
    }
    int64_t shape[3] = {2, H, W};
    image img = from_input(f, 2, 3, shape, 3);
    expect_upscaled(&img, want, W, H, 1, 1);
    free(img.px);
}
END_TEST

START_TEST(test_f32_constant)
{
    /* A constant image has no range: mid gray everywhere, no division by zero. */
    float values[] = {0.0f, -7.25f, 1e30f, 0.5f};
    for (int r = 0; r < 4; r++) {
        float f[3 * 4 * 4];
        for (int i = 0; i < 48; i++) f[i] = values[r];
        int64_t s2[2] = {4, 4}, s3[3] = {3, 4, 4};
        image g = from_input(f, 2, 2, s2, 8);
        ck_assert_int_eq(g.w, 8);
        uint8_t mid = g.px[0];
        ck_assert_msg(mid == 127 || mid == 128, "constant maps to %d", mid);
        for (int i = 0; i < g.w * g.h; i++) EXPECT(g.px[i] == mid, "gray pixel %d = %d", i, g.px[i]);
        image c = from_input(f, 2, 3, s3, 8);
        ck_assert_int_eq(c.ch, 3);
        for (int i = 0; i < c.w * c.h * 3; i++) EXPECT(c.px[i] == mid, "rgb byte %d = %d", i, c.px[i]);
        free(g.px);
        free(c.px);
    }
}
END_TEST

static void from_input_bad(const void *data, int dtype, int ndim, const int64_t *shape, const char *what)
{
    unsigned char *png = NULL;
    size_t len = 999;
    char err[128] = "";
    ck_assert_msg(thumb_from_input(data, dtype, ndim, shape, 64, &png, &len, err, sizeof err) == -1, "accepted %s",
                  what);
    ck_assert_ptr_null(png);
    ck_assert_uint_eq(len, 999);
    ck_assert_msg(err[0] != '\0', "no message for %s", what);
}

/* NaN shows black, +-inf clamp to the ends, and the range comes from the
 * finite values only (so one NaN or inf does not grey out the picture). */
START_TEST(test_f32_non_finite)
{
    const int H = 2, W = 3;
    float f[6] = {NAN, 0.0f, 2.0f, INFINITY, -INFINITY, 1.0f};
    uint8_t want[6] = {0, 0, 255, 255, 0, 128};
    int64_t s2[2] = {H, W};
    image a = from_input(f, 2, 2, s2, 3);
    expect_upscaled(&a, want, W, H, 1, 1);
    free(a.px);
    float g[6] = {NAN, NAN, NAN, NAN, INFINITY, -INFINITY}; /* no finite value */
    uint8_t wantg[6] = {0, 0, 0, 0, 255, 0};
    image b = from_input(g, 2, 2, s2, 3);
    expect_upscaled(&b, wantg, W, H, 1, 1);
    free(b.px);
}
END_TEST

START_TEST(test_from_input_bad_args)
{
    float f[64] = {0};
    int64_t ok2[2] = {4, 4}, ok3[3] = {1, 4, 4}, ok4[4] = {1, 1, 4, 4};
    from_input_bad(f, 2, 0, ok2, "rank 0");
    from_input_bad(f, 2, 4, ok4, "rank 4");
    from_input_bad(f, 2, -1, ok2, "rank -1");
    int64_t z1[2] = {0, 4}, z2[2] = {4, 0}, n1[2] = {-4, 4}, z3[3] = {0, 4, 4}, n3[3] = {-1, 4, 4},
            zz[3] = {3, 4, 0};
    from_input_bad(f, 2, 2, z1, "0 rows");
    from_input_bad(f, 1, 2, z2, "0 columns");
    from_input_bad(f, 2, 2, n1, "negative rows");
    from_input_bad(f, 1, 3, z3, "0 channels");
    from_input_bad(f, 2, 3, n3, "negative channels");
    from_input_bad(f, 1, 3, zz, "rgb of 0 columns");
    from_input_bad(f, 0, 2, ok2, "dtype 0");
    from_input_bad(f, 3, 3, ok3, "dtype 3");
    from_input_bad(f, -1, 2, ok2, "dtype -1");
    from_input_bad(NULL, 1, 2, ok2, "no data");
}
END_TEST

/* jet as the spec says it: blue (h 0) through cyan, yellow, to red (h 1). */
static void want_jet(double h, uint8_t out[3])
{
    double c[3] = {1.5 - fabs(4 * h - 3), 1.5 - fabs(4 * h - 2), 1.5 - fabs(4 * h - 1)};
    for (int i = 0; i < 3; i++) out[i] = (uint8_t)(255.0 * (c[i] < 0 ? 0 : c[i] > 1 ? 1 : c[i]) + 0.5);
}

static image heat(const uint8_t *px, int64_t h, int64_t w, const double *map, int mw, int mh, int magnitude,
                  double alpha, int side)
{
    int64_t shape[2] = {h, w};
    unsigned char *png = NULL;
    size_t len = 0;
    char err[128] = "";
    ck_assert_msg(thumb_heatmap(px, 1, 2, shape, map, mw, mh, magnitude, alpha, side, &png, &len, err, sizeof err) == 0,
                  "heatmap: %s", err);
    image img = decode(png, len);
    free(png);
    ck_assert_int_eq(img.ch, 3);
    return img;
}

START_TEST(test_heatmap_alpha_0_is_the_image)
{
    uint8_t *px = random_px(6 * 5, 11);
    double map[4] = {0, 1, -3, 2};
    image img = heat(px, 5, 6, map, 2, 2, 1, 0.0, 24);
    ck_assert_int_eq(img.w, 24);
    ck_assert_int_eq(img.h, 20);
    for (int y = 0; y < img.h; y++)
        for (int x = 0; x < img.w; x++)
            for (int c = 0; c < 3; c++)
                EXPECT(img.px[((size_t)y * img.w + x) * 3 + c] == px[(y / 4) * 6 + x / 4], "pixel (%d,%d)", x, y);
    free(img.px);
    free(px);
}
END_TEST

START_TEST(test_heatmap_colours_and_scaling)
{
    uint8_t px[16] = {0};
    /* a map at the image's resolution (scale 1): each pixel its own cell */
    double map[16];
    for (int i = 0; i < 16; i++) map[i] = i % 5 == 0 ? -2.0 * i : (double)i;
    for (int magnitude = 0; magnitude < 2; magnitude++) {
        image img = heat(px, 4, 4, map, 4, 4, magnitude, 1.0, 4);
        double top = 0;
        for (int i = 0; i < 16; i++) {
            double v = magnitude ? fabs(map[i]) : map[i];
            top = v > top ? v : top;
        }
        for (int i = 0; i < 16; i++) {
            double v = magnitude ? fabs(map[i]) : map[i];
            uint8_t want[3];
            want_jet(v > 0 ? v / top : 0, want);
            for (int c = 0; c < 3; c++)
                EXPECT(img.px[i * 3 + c] == want[c], "magnitude %d cell %d ch %d: %d != %d", magnitude, i, c,
                       img.px[i * 3 + c], want[c]);
        }
        free(img.px);
    }
    /* an all-zero map is all blue (h 0); half alpha blends evenly */
    double zero[4] = {0};
    uint8_t white[4] = {255, 255, 255, 255};
    image img = heat(white, 2, 2, zero, 2, 2, 0, 0.5, 2);
    uint8_t b[3];
    want_jet(0, b);
    for (int c = 0; c < 3; c++) ck_assert_int_eq(img.px[c], (int)(0.5 * 255 + 0.5 * b[c] + 0.5));
    free(img.px);
}
END_TEST

START_TEST(test_heatmap_bilinear)
{
    /* a 2x2 map over an 8x8 image: corners take the corner cells, the
     * centre their mean, rows in between interpolate */
    uint8_t px[64] = {0};
    double map[4] = {0, 1, 2, 4};
    image img = heat(px, 8, 8, map, 2, 2, 0, 1.0, 8);
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) {
            double u = (x + 0.5) * 2 / 8 - 0.5, v = (y + 0.5) * 2 / 8 - 0.5;
            u = u < 0 ? 0 : u > 1 ? 1 : u;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            double m = (1 - v) * ((1 - u) * map[0] + u * map[1]) + v * ((1 - u) * map[2] + u * map[3]);
            uint8_t want[3];
            want_jet(m / 4, want);
            for (int c = 0; c < 3; c++)
                EXPECT(abs((int)img.px[(y * 8 + x) * 3 + c] - want[c]) <= 1, "(%d,%d) ch %d: %d vs %d", x, y, c,
                       img.px[(y * 8 + x) * 3 + c], want[c]);
        }
    free(img.px);
}
END_TEST

START_TEST(test_heatmap_bad_args)
{
    uint8_t px[4] = {0};
    int64_t shape[2] = {2, 2};
    double map[4] = {0};
    unsigned char *png = NULL;
    size_t len;
    char err[128];
    ck_assert_int_eq(thumb_heatmap(px, 1, 2, shape, NULL, 2, 2, 0, 0.5, 8, &png, &len, err, sizeof err), -1);
    ck_assert_int_eq(thumb_heatmap(px, 1, 2, shape, map, 0, 2, 0, 0.5, 8, &png, &len, err, sizeof err), -1);
    ck_assert_int_eq(thumb_heatmap(px, 1, 2, shape, map, 2, 2, 0, 1.5, 8, &png, &len, err, sizeof err), -1);
    ck_assert_int_eq(thumb_heatmap(px, 1, 2, shape, map, 2, 2, 0, NAN, 8, &png, &len, err, sizeof err), -1);
    ck_assert_int_eq(thumb_heatmap(px, 1, 5, shape, map, 2, 2, 0, 0.5, 8, &png, &len, err, sizeof err), -1);
    ck_assert_ptr_null(png);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("thumb");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_encode_gray);
    tcase_add_test(tc, test_encode_rgb);
    tcase_add_test(tc, test_encode_shapes);
    tcase_add_test(tc, test_encode_bad_args);
    tcase_add_test(tc, test_u8_gray_shapes);
    tcase_add_test(tc, test_scale_rule);
    tcase_add_test(tc, test_u8_rgb_chw);
    tcase_add_test(tc, test_u8_other_channels_first);
    tcase_add_test(tc, test_f32_gray_minmax);
    tcase_add_test(tc, test_f32_rgb);
    tcase_add_test(tc, test_f32_other_channels_first);
    tcase_add_test(tc, test_f32_constant);
    tcase_add_test(tc, test_f32_non_finite);
    tcase_add_test(tc, test_from_input_bad_args);
    tcase_add_test(tc, test_heatmap_alpha_0_is_the_image);
    tcase_add_test(tc, test_heatmap_colours_and_scaling);
    tcase_add_test(tc, test_heatmap_bilinear);
    tcase_add_test(tc, test_heatmap_bad_args);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
