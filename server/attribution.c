/* attribution.c -- see attribution.h. */
#include "attribution.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "infer.h"
#include "inputs.h"
#include "registry.h"
#include "source.h"

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
    return (double)((splitmix64(s) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

double attribution_normal(uint64_t *s)
{
    double u1 = uniform(s), u2 = uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void attribution_free(attribution *t)
{
    free(t->values);
    free(t->channels);
    memset(t, 0, sizeof *t);
}

/* The deepest [C,H,W] layer at or before `layer`, or -1. */
static int deepest_spatial(const shim_model *m, int layer)
{
    for (int i = layer; i >= 0; i--)
        if (shim_layer_at(m, i)->ndim == 3) return i;
    return -1;
}

static int shim_fail(int rc, const char *err, proto_err *e)
{
    if (rc == SHIM_NOT_DIFFERENTIABLE) return proto_fail(e, 422, "not_differentiable", "%s", err);
    return proto_fail(e, 500, "inference_failed", "%s", err);
}

/* gradient / SmoothGrad: input row 0 is the input itself (its target), rows
 * 1..S the noisy copies; forwards of at most the model's batch. */
static int run_gradient(registry_model *m, const float *x, size_t numel, const shim_grad_req *base,
                        const proto_attribution_req *q, attribution *out, double *grad, proto_err *e)
{
    size_t S = (size_t)q->samples, rows = S + 1, per = m->batch ? m->batch : 1;
    float xmin = INFINITY, xmax = -INFINITY;
    for (size_t i = 0; i < numel; i++) {
        if (x[i] < xmin) xmin = x[i];
        if (x[i] > xmax) xmax = x[i];
    }
    float range = xmax - xmin; /* in float, as torch's (x.max() - x.min()) */
    out->sigma = S ? q->noise * (double)(isfinite(range) ? range : 0.0f) : 0.0;
    out->samples = (uint32_t)S;
    float *in = malloc(per * numel * sizeof *in), *g = malloc(per * numel * sizeof *g), *tv = malloc(per * sizeof *tv);
    int rc = -1;
    if (!in || !g || !tv) {
        proto_fail(e, 500, "internal", "out of memory");
        goto done;
    }
    uint64_t rng = q->seed;
    memset(grad, 0, numel * sizeof *grad);
    char err[512];
    for (size_t r0 = 0; r0 < rows; r0 += per) {
        size_t n = rows - r0 < per ? rows - r0 : per;
        for (size_t k = 0; k < n; k++) {
            float *dst = in + k * numel;
            if (r0 + k == 0) {
                memcpy(dst, x, numel * sizeof *dst);
            } else {
                for (size_t i = 0; i < numel; i++)
                    dst[i] = (float)((double)x[i] + out->sigma * attribution_normal(&rng));
            }
        }
        shim_grad_req req = *base;
        req.input_grad = g;
        req.target = tv;
        infer_turn_begin(m);
        int src = shim_grad(m->shim, in, (int64_t)n, &req, err, sizeof err);
        infer_turn_end(m);
        if (src != 0) {
            shim_fail(src, err, e);
            goto done;
        }
        for (size_t k = 0; k < n; k++) {
            if (r0 + k == 0) {
                out->target = tv[0];
                out->has_target = 1;
                if (S) continue; /* SmoothGrad: the noisy copies only */
            }
            for (size_t i = 0; i < numel; i++) grad[i] += g[k * numel + i];
        }
    }
    if (S)
        for (size_t i = 0; i < numel; i++) grad[i] /= (double)S;
    rc = 0;
done:
    free(in);
    free(g);
    free(tv);
    return rc;
}

int attribution_compute(app *a, const store_dataset *d, uint64_t id, const proto_attribution_req *q,
                        attribution *out, proto_err *e)
{
    memset(out, 0, sizeof *out);
    registry_model *m = catalog_model(a, q->model, e);
    float *x = NULL, *wf = NULL, *act = NULL, *agr = NULL;
    uint32_t *neurons = NULL;
    double *grad = NULL;
    int rc = -1;
    if (!m) return -1;
    int li = catalog_layer(m, q->layer, e);
    if (li < 0 || catalog_check_fit(m, d, e) != 0) goto done;
    const shim_layer *ly = shim_layer_at(m->shim, li);
    if (!(neurons = malloc(q->nneurons * sizeof *neurons))) goto oom;
    for (size_t j = 0; j < q->nneurons; j++) {
        if (q->neurons[j] >= (uint64_t)ly->neurons) {
            proto_fail(e, 422, "neuron_out_of_range", "neurons: entry %zu = %llu; layer '%s' has neurons 0..%lld", j,
                       (unsigned long long)q->neurons[j], ly->name, (long long)ly->neurons - 1);
            goto done;
        }
        neurons[j] = (uint32_t)q->neurons[j];
    }
    if (q->weights) {
        if (!(wf = malloc(q->nneurons * sizeof *wf))) goto oom;
        for (size_t j = 0; j < q->nneurons; j++) wf[j] = (float)q->weights[j];
    }
    static const int aggs[] = {SHIM_SUM, SHIM_MEAN, SHIM_MAX, SHIM_MIN};
    shim_grad_req base = {.layer = li, .neurons = neurons, .nneurons = q->nneurons, .weights = wf,
                          .agg = aggs[q->agg & 3], .cam_layer = -1};
    char err[512];

    if (q->method == ATTR_CHANNEL) {
        if (ly->ndim != 3) {
            proto_fail(e, 422, "not_spatial", "method 'channel' needs a layer of [C,H,W] outputs; '%s' is of rank %d",
                       ly->name, ly->ndim);
            goto done;
        }
        size_t hw = (size_t)(ly->shape[1] * ly->shape[2]);
        if (!(out->channels = malloc(q->nneurons * sizeof *out->channels))) goto oom;
        for (size_t j = 0; j < q->nneurons; j++) {
            uint32_t c = (uint32_t)(neurons[j] / hw);
            size_t k = 0;
            while (k < out->nchannels && out->channels[k] != c) k++;
            if (k == out->nchannels) out->channels[out->nchannels++] = c;
        }
        /* sorted, so the sum runs in channel order */
        for (size_t i = 1; i < out->nchannels; i++)
            for (size_t k = i; k > 0 && out->channels[k - 1] > out->channels[k]; k--) {
                uint32_t t = out->channels[k];
                out->channels[k] = out->channels[k - 1];
                out->channels[k - 1] = t;
            }
        size_t ncols = out->nchannels * hw;
        uint32_t *cols = malloc(ncols * sizeof *cols);
        if (!cols || !(act = malloc(ncols * sizeof *act)) || !(out->values = calloc(hw, sizeof *out->values))) {
            free(cols);
            goto oom;
        }
        for (size_t k = 0; k < out->nchannels; k++)
            for (size_t i = 0; i < hw; i++) cols[k * hw + i] = (uint32_t)(out->channels[k] * hw + i);
        source_ctx src;
        source_init(&src, a, m, d, li);
        uint32_t id32 = (uint32_t)id;
        eng_fetch_stats st = {0};
        int frc = source_fetch(&src, &id32, 1, cols, ncols, act, &st, err, sizeof err);
        free(cols);
        if (frc != 0) {
            proto_fail(e, 500, "inference_failed", "%s", err);
            goto done;
        }
        for (size_t k = 0; k < out->nchannels; k++)
            for (size_t i = 0; i < hw; i++) out->values[i] += (double)act[k * hw + i];
        out->ndim = 2;
        out->shape[0] = ly->shape[1];
        out->shape[1] = ly->shape[2];
        rc = 0;
        goto done;
    }

    if (catalog_input_tensor(a, d, id, &x, e) != 0) goto done;
    size_t numel = (size_t)shim_input_numel(m->shim);
    int64_t ishape[SHIM_MAX_DIMS];
    int ind = shim_input_shape(m->shim, ishape);

    if (q->method == ATTR_GRADCAM) {
        int cl = q->cam_layer[0] ? catalog_layer(m, q->cam_layer, e) : deepest_spatial(m->shim, li);
        if (q->cam_layer[0] && cl < 0) goto done;
        if (cl < 0) {
            proto_fail(e, 422, "not_spatial", "Grad-CAM needs a layer of [C,H,W] outputs at or before '%s'; the model "
                       "has none", ly->name);
            goto done;
        }
        const shim_layer *cly = shim_layer_at(m->shim, cl);
        if (cl > li || cly->ndim != 3) {
            proto_fail(e, 422, "invalid_cam_layer", "cam_layer '%s' must be a layer of [C,H,W] outputs at or before "
                       "'%s'", cly->name, ly->name);
            goto done;
        }
        if (!(act = malloc((size_t)cly->neurons * sizeof *act)) || !(agr = malloc((size_t)cly->neurons * sizeof *agr)))
            goto oom;
        float tv;
        shim_grad_req req = base;
        req.cam_layer = cl;
        req.cam_act = act;
        req.cam_grad = agr;
        req.target = &tv;
        infer_turn_begin(m);
        int src = shim_grad(m->shim, x, 1, &req, err, sizeof err);
        infer_turn_end(m);
        if (src != 0) {
            shim_fail(src, err, e);
            goto done;
        }
        size_t C = (size_t)cly->shape[0], hw = (size_t)(cly->shape[1] * cly->shape[2]);
        if (!(out->values = calloc(hw, sizeof *out->values))) goto oom;
        for (size_t c = 0; c < C; c++) {
            double alpha = 0;
            for (size_t i = 0; i < hw; i++) alpha += (double)agr[c * hw + i];
            alpha /= (double)hw;
            for (size_t i = 0; i < hw; i++) out->values[i] += alpha * (double)act[c * hw + i];
        }
        for (size_t i = 0; i < hw; i++)
            if (!(out->values[i] > 0)) out->values[i] = 0; /* ReLU (NaN too) */
        snprintf(out->cam_layer, sizeof out->cam_layer, "%s", cly->name);
        out->target = tv;
        out->has_target = 1;
        out->ndim = 2;
        out->shape[0] = cly->shape[1];
        out->shape[1] = cly->shape[2];
        rc = 0;
        goto done;
    }

    if (!(grad = malloc(numel * sizeof *grad))) goto oom;
    if (run_gradient(m, x, numel, &base, q, out, grad, e) != 0) goto done;
    /* channels summed: [C,H,W] -> [H,W]; other ranks as they are (rank > 2
     * other than 3 flattened) */
    if (ind == 3) {
        size_t C = (size_t)ishape[0], hw = (size_t)(ishape[1] * ishape[2]);
        if (!(out->values = calloc(hw, sizeof *out->values))) goto oom;
        for (size_t c = 0; c < C; c++)
            for (size_t i = 0; i < hw; i++) out->values[i] += grad[c * hw + i];
        out->ndim = 2;
        out->shape[0] = ishape[1];
        out->shape[1] = ishape[2];
    } else {
        out->values = grad;
        grad = NULL;
        out->ndim = ind == 2 ? 2 : 1;
        out->shape[0] = ind == 2 ? ishape[0] : (int64_t)numel;
        out->shape[1] = ind == 2 ? ishape[1] : 0;
    }
    rc = 0;
    goto done;
oom:
    proto_fail(e, 500, "internal", "out of memory");
done:
    if (rc) attribution_free(out);
    free(x);
    free(wf);
    free(act);
    free(agr);
    free(neurons);
    free(grad);
    registry_release(m);
    return rc;
}
