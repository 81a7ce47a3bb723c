/* attribution.h -- where on an input a neuron group fires.
 *
 * Three maps of one input (proto_attribution_req):
 *   gradient  the gradient of the group's aggregate (agg, weights: as a
 *             top-k) with respect to the input, its channels summed: [H,W]
 *             for a [C,H,W] input, the input's shape otherwise. With
 *             samples > 0, SmoothGrad: the mean gradient over that many
 *             copies with Gaussian noise of sigma = noise * (max - min of
 *             the input), drawn by splitmix64 from seed (reproducible);
 *   gradcam   Grad-CAM: at cam_layer (a [C,H,W] layer at or before the
 *             group's; by default the deepest one), ReLU(sum_c alpha_c A_c)
 *             with alpha_c the spatial mean of d aggregate / d A_c: [H,W] at
 *             that layer's resolution;
 *   channel   a [C,H,W] layer's activation maps of the channels that hold
 *             the group's neurons, summed: [H,W] at the layer's resolution
 *             (computed through the shared cache like any activation).
 * Gradients come from the shim's autograd (a model that detaches: 422
 * not_differentiable); they run in the model's turn, like inference.
 */
#ifndef DE_ATTRIBUTION_H
#define DE_ATTRIBUTION_H

#include <stdint.h>

#include "app.h"
#include "jspec.h"
#include "proto.h"
#include "store.h"

typedef struct attribution {
    int ndim;                /* of values: 1 or 2 */
    int64_t shape[2];
    double *values;          /* row-major, prod(shape) */
    double target;           /* the group's aggregate on the input (gradient, gradcam) */
    int has_target;
    char cam_layer[PROTO_LAYER_MAX + 1];
    uint32_t *channels;      /* channel: the channels summed */
    size_t nchannels;
    uint32_t samples;
    double sigma;            /* SmoothGrad's noise, in input units */
} attribution;

/* Computes q's map of local input id of d into *out (attribution_free it). */
int attribution_compute(app *a, const store_dataset *d, uint64_t id, const proto_attribution_req *q,
                        attribution *out, proto_err *e);
void attribution_free(attribution *t);

/* The splitmix64 Gaussian stream SmoothGrad draws from (Box-Muller, cosine
 * branch, uniforms in (0, 1]): state *s, one normal per call. Its
 * sequence is the contract scripts/make_workflow_fixtures.py reproduces. */
double attribution_normal(uint64_t *s);

#endif
