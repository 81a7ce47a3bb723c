/* log.h -- the daemon's log (stderr, one line per event, UTC timestamps) and
 * its clocks. */
#ifndef DE_LOG_H
#define DE_LOG_H

#include <stdint.h>

/* One line to stderr: "2026-12-01T21:13:53.123Z message". Lines of
 * different threads never interleave. */
void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic milliseconds (for durations and deadlines). */
double clock_ms(void);
/* Wall-clock unix seconds (for records: created, started, finished). */
int64_t clock_unix(void);

#endif
