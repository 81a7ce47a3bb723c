/* dsread.h -- streaming readers of dataset files: NumPy .npy and idx (the
 * MNIST family), each optionally gzip-compressed (detected by its magic).
 *
 * Push parser: bytes go in with dsread_feed() in chunks of any size (a file
 * read loop, or an HTTP body as it arrives); complete inputs come out through
 * a callback, in order, in runs of whole inputs, so an import never holds the
 * whole file in memory. The header callback runs once, before any input.
 *
 * Accepted: .npy v1/v2/v3, C-order, dtypes |u1 <i4 <i8 <f4 (and >f4, >i4),
 * rank 1..5; idx with element types u8, i32 and f32 (big-endian), rank 1..5.
 * Data is delivered in native byte order: u8 as uint8, i4/i8 as int64 widened
 * (DSREAD_I64), f4 as float. Every header field is checked against what
 * follows: a lying or truncated header is an error, never a crash.
 *
 * Lifetimes: the pointer passed to the input callback is valid during the
 * call only.
 */
#ifndef DE_DSREAD_H
#define DE_DSREAD_H

#include <stddef.h>
#include <stdint.h>

#define DSREAD_MAX_DIMS 8

enum dsread_format { DSREAD_AUTO = 0, DSREAD_NPY = 1, DSREAD_IDX = 2 };
enum dsread_dtype { DSREAD_U8 = 1, DSREAD_F32 = 2, DSREAD_I64 = 3 };

typedef struct dsread_info {
    int format;                       /* enum dsread_format, as detected */
    int dtype;                        /* enum dsread_dtype, as delivered */
    int ndim;                         /* full rank, first dim = count */
    int64_t shape[DSREAD_MAX_DIMS];
    uint64_t count;                   /* shape[0] */
    size_t input_elems;               /* product of shape[1..] (1 for rank 1) */
    size_t input_bytes;               /* input_elems * sizeof(delivered dtype) */
} dsread_info;

typedef struct dsread dsread;

/* Return nonzero from a callback to stop the parse; feed then fails with the
 * message the callback wrote into err (or "aborted"). */
typedef int (*dsread_header_fn)(const dsread_info *info, void *arg, char *err, size_t errlen);
typedef int (*dsread_inputs_fn)(const void *data, uint64_t first, uint64_t count,
                                void *arg, char *err, size_t errlen);

/* format DSREAD_AUTO detects npy (\x93NUMPY) or idx (two zero bytes) after an
 * optional gzip layer. max_bytes caps the decompressed size (0 = no cap). */
int dsread_new(int format, uint64_t max_bytes, dsread_header_fn on_header,
               dsread_inputs_fn on_inputs, void *arg, dsread **out);
int dsread_feed(dsread *r, const void *buf, size_t len, char *err, size_t errlen);
/* End of stream: fails when the data stops short of what the header says or
 * runs past it. */
int dsread_finish(dsread *r, char *err, size_t errlen);
void dsread_free(dsread *r);

/* Convenience: feeds a whole file through r in 1 MiB reads. */
int dsread_file(dsread *r, const char *path, char *err, size_t errlen);

#endif
