/* testrng.h -- the unit suites' deterministic generator (xorshift64*), so a
 * failing case reproduces from its seed. */
#ifndef DE_TESTRNG_H
#define DE_TESTRNG_H

#include <stdint.h>

static uint64_t rng_state;
static inline void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 1; }
static inline uint32_t rng_u32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}
static inline uint32_t rng_below(uint32_t n) { return n ? rng_u32() % n : 0; }
static inline double rng_unit(void) { return rng_u32() / 4294967296.0; }

#endif
