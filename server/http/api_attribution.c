/* api_attribution.c -- GET .../inputs/{id}/attribution and .../attribution.png:
 * where on an input a neuron group fires (attribution.h). */
#include <stdlib.h>

#include "api.h"
#include "attribution.h"
#include "catalog.h"
#include "proto.h"

static const char *arg(void *ctx, const char *name) { return http_arg(ctx, name); }

/* Parses, finds the input and computes; replies the error itself. */
static int compute(http_req *r, store_dataset *d, uint64_t *id, proto_attribution_req *q, attribution *t)
{
    proto_err e;
    if (api_find_input(r, d, id, &e) != 0 || proto_parse_attribution(arg, r, q, &e) != 0) {
        http_reply_err(r, &e);
        return -1;
    }
    if (attribution_compute(r->app, d, *id, q, t, &e) != 0) {
        proto_free_attribution(q);
        http_reply_err(r, &e);
        return -1;
    }
    return 0;
}

void api_input_attribution(http_req *r)
{
    store_dataset d;
    uint64_t id;
    proto_attribution_req q;
    attribution t;
    if (compute(r, &d, &id, &q, &t) != 0) return;
    size_t n = (size_t)t.shape[0] * (size_t)(t.ndim == 2 ? t.shape[1] : 1);
    json_t *vals = json_array();
    double lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(vals, json_real(t.values[i]));
        if (i == 0 || t.values[i] < lo) lo = t.values[i];
        if (i == 0 || t.values[i] > hi) hi = t.values[i];
    }
    json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:o,s:o,s:f,s:f}", "input", (json_int_t)(d.first + id), "model", q.model,
                          "layer", q.layer, "method", proto_attr_method_names[q.method], "shape",
                          api_shape_json(t.shape, t.ndim), "values", vals, "min", lo, "max", hi);
    if (t.has_target) json_object_set_new(o, "target", json_real(t.target));
    if (t.cam_layer[0]) json_object_set_new(o, "cam_layer", json_string(t.cam_layer));
    if (t.nchannels) {
        json_t *ch = json_array();
        for (size_t i = 0; i < t.nchannels; i++) json_array_append_new(ch, json_integer(t.channels[i]));
        json_object_set_new(o, "channels", ch);
    }
    if (t.samples) {
        json_object_set_new(o, "samples", json_integer(t.samples));
        json_object_set_new(o, "sigma", json_real(t.sigma));
        json_object_set_new(o, "seed", json_integer((json_int_t)q.seed));
    }
    attribution_free(&t);
    proto_free_attribution(&q);
    http_reply_json(r, 200, o);
}

void api_input_attribution_png(http_req *r)
{
    store_dataset d;
    uint64_t id;
    proto_attribution_req q;
    attribution t;
    proto_err e;
    unsigned char *png;
    size_t len;
    if (compute(r, &d, &id, &q, &t) != 0) return;
    int mh = t.ndim == 2 ? (int)t.shape[0] : 1, mw = t.ndim == 2 ? (int)t.shape[1] : (int)t.shape[0];
    /* gradients are signed: their magnitude shows; Grad-CAM and activation
     * maps where they are positive */
    int rc = catalog_input_heatmap(r->app, &d, id, t.values, mw, mh, q.method == ATTR_GRADIENT, q.alpha, (int)q.size,
                                   &png, &len, &e);
    attribution_free(&t);
    proto_free_attribution(&q);
    if (rc != 0)
        http_reply_err(r, &e);
    else
        http_reply_bytes(r, 200, "image/png", png, len, 1);
}
