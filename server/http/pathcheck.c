/* pathcheck.c -- see pathcheck.h. */
#include "pathcheck.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pathcheck_resolve(const char *root, const char *path, const char *field, char *out, size_t outlen,
                      proto_err *e)
{
    char real[PATH_MAX], rroot[PATH_MAX];
    if (!path || !*path) return proto_fail(e, 422, "invalid_path", "field '%s' is empty", field);
    if (!realpath(path, real))
        return proto_fail(e, 422, "invalid_path", "field '%s': cannot open '%s': %s", field, path, strerror(errno));
    if (root) {
        if (!realpath(root, rroot))
            return proto_fail(e, 500, "invalid_import_root", "--import-root '%s': %s", root, strerror(errno));
        size_t n = strlen(rroot);
        int inside = strncmp(real, rroot, n) == 0 && (real[n] == '/' || real[n] == '\0' || n == 1);
        if (!inside)
            return proto_fail(e, 403, "path_outside_import_root",
                              "field '%s': '%s' is outside the import root (--import-root)", field, path);
    }
    if (strlen(real) >= outlen) return proto_fail(e, 422, "invalid_path", "field '%s': path too long", field);
    memcpy(out, real, strlen(real) + 1);
    return 0;
}
