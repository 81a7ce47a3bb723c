/* importer.h -- dataset imports, from a file or a body streamed in chunks.
 *
 * An import writes a PENDING dataset record first, then the inputs in write
 * transactions of about 16 MiB as the parser (storage/dsread.h) delivers
 * them, then the labels, and flips the record to READY last: readers never
 * see half an import, and a failure (or a crash, swept at the next start)
 * deletes everything written. Nothing holds the whole file in memory.
 *
 * Lifetimes: an importer lives from importer_begin to importer_free.
 */
#ifndef DE_IMPORTER_H
#define DE_IMPORTER_H

#include "app.h"
#include "jspec.h"
#include "proto.h"

typedef struct importer importer;

/* Creates the PENDING record of q->name (409 dataset_exists when taken).
 * format: enum dsread_format. */
int importer_begin(app *a, const proto_dataset_req *q, int format, importer **out, proto_err *e);
/* Parses the next piece of the file (422 invalid_dataset naming the problem). */
int importer_feed(importer *im, const void *data, size_t len, proto_err *e);
/* The whole file at path (already resolved; shown as `shown` in errors). */
int importer_file(importer *im, const char *path, const char *shown, proto_err *e);
/* Completes the import: the labels file (NULL = none), then READY. *out gets
 * the record. */
int importer_finish(importer *im, const char *labels_path, store_dataset *out, proto_err *e);
/* Frees; an import that did not finish is deleted with all it wrote. */
void importer_free(importer *im);

/* POST /v1/datasets: begin, the file, finish, in one call. */
int importer_import_file(app *a, const proto_dataset_req *q, const char *path, const char *labels_path,
                         store_dataset *out, proto_err *e);

#endif
