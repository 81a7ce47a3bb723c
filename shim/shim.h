/* shim.h -- the C face of LibTorch.
 *
 * The only C++ of the project lives behind this header (shim.cpp). No C++
 * exception crosses it: every call that can fail returns 0 on success or -1
 * and writes a NUL-terminated message into err[errlen].
 *
 * Layers follow the model convention (README.md, "The model convention"):
 *   1. forward(x) returns Dict[str, Tensor]: each key is a layer, in forward
 *      order. If the module also has a method `forward_to(x, layer: str)`
 *      (our exporter writes one) the shim uses it to stop the forward at the
 *      deepest layer that a call needs.
 *   2. otherwise the module's named children, applied in order; nested
 *      Sequentials are flattened to their leaf modules with dotted names
 *      ("features.3.0"). The forward stops after the deepest requested layer.
 *
 * Lifetimes: a shim_model is valid from shim_load until shim_free. Strings and
 * shapes returned by shim_layer() are owned by the model and valid until
 * shim_free. Calls on one model may come from several threads, but the caller
 * serializes shim_run on one model (the server does, with one lock per model).
 */
#ifndef DE_SHIM_H
#define DE_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHIM_MAX_DIMS 8

typedef struct shim_model shim_model;

typedef struct shim_layer {
    const char *name;              /* layer name, e.g. "conv2" or "features.3" */
    int ndim;                      /* rank of one input's output (no batch dim) */
    int64_t shape[SHIM_MAX_DIMS];  /* per-input output shape */
    int64_t neurons;               /* product of shape */
} shim_layer;

/* Process-wide settings, once, before any other call and before threads are
 * started: intra-op threads (0 = number of cores), glibc malloc thresholds so
 * that large tensors are not mmapped per forward, OpenBLAS pinned to one
 * thread (together worth 4x on 2 cores, see shim/README.md). */
int shim_init(int threads, char *err, size_t errlen);

/* 1 when a CUDA device is usable by this LibTorch build, else 0. */
int shim_cuda_available(void);

/* Loads a TorchScript file on `device` ("auto" = cuda when available, "cpu",
 * "cuda"). The per-input input shape comes from the archive's extra file
 * `deepeverest.json` ({"input_shape":[C,H,W]}) or, when the archive has none,
 * from input_shape/input_ndim (pass NULL/0 for "none known": the load then
 * fails with a message that says how to give one). The model is run once on
 * a zero input to discover its layers and their shapes; a file that is not
 * TorchScript, or that cannot take the shape, fails here. */
int shim_load(const char *path, const char *device, const int64_t *input_shape,
              int input_ndim, shim_model **out, char *err, size_t errlen);

void shim_free(shim_model *m);

/* Memory layout of a model's 4-D tensors (conv weights, images). */
enum shim_layout { SHIM_CONTIGUOUS = 1, SHIM_CHANNELS_LAST = 2 };

/* Puts the model's 4-D parameters, and from then on its 4-D inputs, in
 * `layout`, before the first shim_run: with channels-last weights oneDNN's
 * convolutions and the vectorized max pooling run NHWC (measured 1.3x a
 * forward of the demo CNN on 2 cores; contiguous NCHW pools one scalar at a
 * time). The outputs mean the same neurons in either layout, but their bits
 * differ: an index must be queried under the layout it was built with. */
int shim_set_layout(shim_model *m, int layout, char *err, size_t errlen);
int shim_layout(const shim_model *m);

/* "cpu" or "cuda": where the model runs. */
const char *shim_device(const shim_model *m);

/* Per-input input shape; returns its rank and fills shape[SHIM_MAX_DIMS]. */
int shim_input_shape(const shim_model *m, int64_t *shape);
int64_t shim_input_numel(const shim_model *m);

int shim_layer_count(const shim_model *m);
/* Layer i (0 <= i < count), in forward order; NULL when out of range. */
const shim_layer *shim_layer_at(const shim_model *m, int i);
/* Index of the layer named `name`, or -1. */
int shim_layer_find(const shim_model *m, const char *name);

/* What shim_run copies out of one layer: every neuron (cols NULL) or the
 * listed flat neuron indices, in that order, for each of the n inputs:
 * dst holds n * (cols ? ncols : neurons) floats, input-major. Extracting only
 * what a caller needs keeps the cost of a wide layer's copy off the query
 * path (a layer of 800k neurons is 3 MiB per input). */
typedef struct shim_out {
    int layer;                     /* layer index */
    const uint32_t *cols;          /* NULL = the whole layer */
    size_t ncols;
    float *dst;
} shim_out;

/* Runs n inputs (n * shim_input_numel floats, C-order, already normalized)
 * and copies the outputs asked for. The forward stops at the deepest layer
 * asked for where the model allows it. A col past the layer's neurons is an
 * error. Returns 0, or -1 with err. */
int shim_run(shim_model *m, const float *in, int64_t n, const shim_out *outs, int nouts, char *err,
             size_t errlen);

/* Attribution: gradients of a neuron group's aggregate, through autograd.
 * Per input, the target is the aggregate of the group's neurons of `layer`
 * (agg: SHIM_SUM sum of w_j a_j, SHIM_MEAN that over the group size,
 * SHIM_MAX / SHIM_MIN the largest / smallest a_j, whose gradient goes to
 * the one neuron torch's max/min picks); the sum of the targets over the n
 * inputs is back-propagated (inputs do not interact in eval mode), so each
 * input gets the gradient of its own target. */
enum shim_agg { SHIM_SUM = 0, SHIM_MEAN, SHIM_MAX, SHIM_MIN };

typedef struct shim_grad_req {
    int layer;                     /* the group's layer */
    const uint32_t *neurons;       /* [nneurons] flat indices in it */
    size_t nneurons;
    const float *weights;          /* [nneurons] or NULL (all 1): SHIM_SUM, SHIM_MEAN */
    int agg;                       /* enum shim_agg */
    float *target;                 /* NULL or [n]: each input's target value */
    float *input_grad;             /* NULL or [n * input numel]: d target / d input */
    int cam_layer;                 /* -1, or a layer at or before `layer`: */
    float *cam_act;                /*   [n * its neurons]: its activations */
    float *cam_grad;               /*   [n * its neurons]: d target / d those */
} shim_grad_req;

#define SHIM_NOT_DIFFERENTIABLE (-2)

/* Runs n inputs (as shim_run) with autograd on and fills what r asks for.
 * Returns 0; -1 with err; or SHIM_NOT_DIFFERENTIABLE with err when the
 * target does not depend differentiably on the input (or on cam_layer): a
 * model that detaches, rounds or takes integer paths there. Serialized
 * with shim_run by the caller, like it. */
int shim_grad(shim_model *m, const float *in, int64_t n, const shim_grad_req *r, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
