/* registry.h -- the models the daemon has loaded.
 *
 * A registered model (a record in the catalog) is loaded once, at
 * registration or at start-up, and kept with what exact inference needs: its
 * batch and the slot classes measured at load (infer.h). Loaded models are
 * reference-counted: a DELETE while a query runs frees the model only when
 * the query lets go of it.
 *
 * Lifetimes: a registry_model from registry_get is valid until its
 * registry_release; its shim model, slot classes and rec until then too.
 */
#ifndef DE_REGISTRY_H
#define DE_REGISTRY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "shim.h"
#include "store.h"

#define REGISTRY_MAX_CLASSES 64

typedef struct registry_model {
    char name[STORE_NAME_MAX + 1];
    uint32_t gen;                /* generation id: cache keys of a re-registration differ */
    shim_model *shim;
    store_model rec;
    uint32_t batch;              /* inputs per forward, fixed for the model's life (infer.h) */
    uint16_t *slot_class;        /* [batch]: slot -> class of slots that compute alike */
    int nclass;
    uint32_t class_slots[REGISTRY_MAX_CLASSES]; /* slots of each class in one forward */
    size_t input_bytes;          /* estimated bytes one input takes in a forward */
    uint64_t numerics;           /* fingerprint of the bits its forwards compute here (infer.h) */
    int numerics_changed;        /* not those of its registration: its indexes' bounds and
                                    MAI values no longer hold exactly (queries on them: 409) */
    double *layer_ms;            /* [layers]: one forward of `batch` inputs to each layer,
                                    timed at load (what a pass to it costs, relatively) */
    double index_probe_ms;       /* bstream_probe_ms timed right after them (the fastest of
                                    five; <= 0: none): indexing's speed at the same time */
    /* Turns at the model (infer_turn_begin/end): tickets, first come first served. */
    pthread_mutex_t turn_lock;
    pthread_cond_t turn_cv;
    unsigned long turn_next, turn_serving;
    atomic_int refs;
    struct registry_model *next;
} registry_model;

typedef struct registry registry;

int registry_new(registry **out);
/* Releases every model (queries still holding one keep it until they let go). */
void registry_free(registry *r);

/* A referenced model by name, or NULL when none is loaded under it. */
registry_model *registry_get(registry *r, const char *name);
void registry_release(registry_model *m);

/* Loads rec's file into a detached model (one reference, the caller's):
 * device from the config, the batch from rec (or, for a new model, the
 * largest up to cfg.batch whose forward fits cfg.infer_memory_mb), slot
 * classes measured, its tensors in rec->layout (0: contiguous, the layout of
 * records from before layouts were kept). A model whose single-input forward does not fit fails
 * with a message that says what it needs. */
int registry_load(app *a, const store_model *rec, registry_model **out, char *err, size_t errlen);
/* "contiguous" or "channels-last": the layout m's tensors run in (store_model.layout). */
const char *registry_layout_name(const registry_model *m);
/* Puts a loaded model in the registry (which takes its own reference),
 * replacing one of the same name. */
void registry_insert(registry *r, registry_model *m);
/* Takes the named model out of the registry; -1 when none is loaded. */
int registry_remove(registry *r, const char *name);

/* Loads every model of the catalog at start-up; one whose file is gone or
 * broken is logged and left out (requests naming it get 503). */
void registry_load_all(app *a);

#endif
