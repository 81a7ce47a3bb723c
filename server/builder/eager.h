/* eager.h -- the layers a build's pass indexes besides the asked ones under
 * --eager-layers fit.
 *
 * A pass to the asked layers (the deepest of them d) costs, alone,
 *   own = forward(d) + the asked layers' indexes.
 * Under fit it may spend up to EAGER_FIT_SPEND x own more: on going deeper,
 * to some r >= d (the forward from d to r), and on indexing layers it then
 * computes. Each layer indexed now saves the pass a later query on it would
 * need; a layer qualifies when its index costs at most its forward (the
 * break-even if such a query comes with probability 1/2). The layers are
 * taken by forward saved per second of index, those that fit in the time
 * and memory left; the reach is the r whose layers save the most forward,
 * net of the extension (the shallower on a tie, d when nothing saves), and
 * when the deepest pick falls short of r, what that saves of the extension
 * goes to more layers.
 *
 * Why a spend cap and not a break-even per layer alone (the rule before
 * 2026-12-07): a session asks a few layers of a model, and the one pass
 * that indexes them all is what beats materializing them up front; per
 * layer, a wide early layer (the demo CNN's pool1) and a wider one (conv3)
 * sit on either side of any break-even within the noise of forwards timed
 * at load, so sessions won or lost by which way a timing fell. The cap
 * bounds what a first query pays (at most 1 + EAGER_FIT_SPEND times its own
 * pass) and ranks layers by what they save, so the cheap ones go first.
 */
#ifndef DE_EAGER_H
#define DE_EAGER_H

#include <stdint.h>

/* What the pass may spend beyond its own cost, as a fraction of it: at
 * 1.2 the demo CNN's pass for any of pool1, conv4, fc1 indexes all three
 * (and logits, mostly pool2) while conv3 (twice pool1's index) stays out,
 * with every forward timing off by up to 5% (test_eager); the sessions in
 * README "Benchmark" measure it. */
#define EAGER_FIT_SPEND 1.2

enum eager_role {
    EAGER_SKIP = 0,  /* indexed already, or not to be indexed: never picked */
    EAGER_ASKED,     /* one of the asked layers */
    EAGER_CANDIDATE, /* may be indexed too */
};

typedef struct eager_layer {
    double forward_s;    /* the forward to this layer over the dataset (s) */
    double index_s;      /* indexing it in the pass (s) */
    uint64_t hold_bytes; /* what its build holds during the pass */
    int role;            /* enum eager_role */
} eager_layer;

/* Picks under fit among layers[0..L) (in forward order): writes the picked
 * layer numbers to pick[] (at most max_pick), best first, and returns how
 * many. mem_left: the memory the pass may still hold for them. No asked
 * layer: picks nothing. Pure: no I/O, no globals. */
int eager_fit(const eager_layer *layers, int L, uint64_t mem_left, int *pick, int max_pick);

#endif
