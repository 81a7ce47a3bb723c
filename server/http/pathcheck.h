/* pathcheck.h -- confines path imports to --import-root.
 *
 * The path is resolved with realpath() (following every symlink, removing
 * "..") and must then lie inside the resolved root, so neither ".." nor a
 * symlink can escape it. Without a root any existing path is accepted.
 */
#ifndef DE_PATHCHECK_H
#define DE_PATHCHECK_H

#include <stddef.h>

#include "jspec.h"

/* Writes the resolved path into out; on failure fills e (422 for a path
 * that does not exist, 403 for one outside the root) naming `field`. */
int pathcheck_resolve(const char *root, const char *path, const char *field, char *out, size_t outlen,
                      proto_err *e);

#endif
