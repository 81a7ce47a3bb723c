/* predictions.h -- a model's predicted class for every input of a dataset.
 *
 * One pass over the dataset (a job, with progress) takes the argmax of a
 * layer (the model's last, unless named) for every input and stores it with
 * how many agree with the labels. Reused by every query after it: filters
 * on predicted classes and misclassified inputs, the input listing, the
 * confusion matrix. The record is PENDING while the job runs and READY with
 * its array in the job's last transaction; a failed or cancelled job leaves
 * nothing.
 */
#ifndef DE_PREDICTIONS_H
#define DE_PREDICTIONS_H

#include <stdint.h>

#include "app.h"
#include "jspec.h"
#include "store.h"

/* Starts the job (or, when the predictions of this layer exist or are being
 * made, reuses them: *reused). *out gets the record. job_id: the job's id as
 * a coordinator chose it (0 = the next; 409 job_id_taken when used). */
int predictions_submit(app *a, const char *model, const char *dataset, const char *layer, uint32_t job_id,
                       store_predictions *out, int *reused, proto_err *e);

/* The READY predictions of model over d, with a malloc'd copy of the
 * predicted classes (*pred, d->count of them; NULL pred: the record only).
 * 409 predictions_missing (with the request that makes them) when there are
 * none or they are being computed. */
int predictions_get(app *a, const char *model, const store_dataset *d, store_predictions *out, int32_t **pred,
                    proto_err *e);

/* The predicted classes of local inputs ids[0..n) into out: 1 when the
 * model has READY predictions over d, else 0 (out untouched). */
int predictions_pick(app *a, const char *model, const store_dataset *d, const uint32_t *ids, size_t n, int32_t *out);

/* The confusion matrix of READY predictions against the labels: counts[t *
 * n + p] inputs of label t predicted p, for labels and classes 0..n-1 (n =
 * the largest of either + 1, at most 1000); others counted in *outside. */
typedef struct predictions_confusion {
    size_t n;
    uint64_t *counts;
    uint64_t outside;
} predictions_confusion;
int predictions_confusion_get(app *a, const char *model, const store_dataset *d, predictions_confusion *out,
                              proto_err *e);

/* Deletes them (404 when none). */
int predictions_delete(app *a, const char *model, const store_dataset *d, proto_err *e);

#endif
