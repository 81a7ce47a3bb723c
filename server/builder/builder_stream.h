/* builder_stream.h -- builds a layer's partition index during the inference
 * pass itself, from a sample of its inputs, without keeping the activations.
 *
 * builder_core.h keeps all N values of every neuron until the pass ends and
 * then ranks them: exactly equi-depth partitions, but the layer's whole
 * N x neurons matrix goes through memory (or a spill file) once, and taking
 * fresh memory is the dearest step of a build on the machines this project
 * runs on. This core instead
 *  1. takes the activations of a sample of the inputs (bstream_sample: about
 *     512 inputs spread over the dataset, bstream_sample_id) and cuts each
 *     neuron's range there into P-1 partitions of about equal sample mass --
 *     a value repeated over a partition's worth of the sample (a ReLU's
 *     zeros) gets a partition of its own, and the others share the rest;
 *  2. in the pass (bstream_add), gives every input its partition at once (its
 *     bits of the id array) and widens that partition's bounds to its value;
 *     an input that may be among the neuron's top m is held as an MAI
 *     candidate instead (its id and exact value), and a full candidate
 *     buffer sheds all but its best m into their partitions;
 *  3. at the end (bstream_finish) the best m candidates are the MAI.
 * The blob (npi.h) is exact in everything the engine relies on: the MAI
 * holds the first ranks in rank order with their exact values, and every
 * other input lies in a partition whose bounds enclose its members. Those
 * bounds are the members' extremes for the two outer partitions (the first,
 * and the last in use) and the values at the cuts for the inner ones: the
 * sampled input at the upper cut (a member, unless it ranks in the MAI) and
 * the one at the lower cut (the next partition's largest), so no input
 * outside the MAI lies between a bound and the members it bounds; tracking
 * every partition's extremes instead took ~27% of the per-value loop as it
 * was measured (3.5 of 12.8 ns per value). What differs from
 * npi_build: partitions hold about, not exactly, equal numbers of inputs;
 * -0.0 ranks just below +0.0 rather than tying with it; and a neuron's MAI
 * may hold fewer than m inputs (its mai_count) when fewer than m were ever
 * candidates -- inputs are candidates when they rank above the sample's
 * estimate of the 3m-th value, so that needs a sample far off the data.
 *
 * Memory: per neuron its id bits, 8 bytes per partition, 8 bytes per
 * candidate slot (m + m/2 + 16) and the cuts; the sample's values while
 * the cuts are made (bstream_bytes). Pure C, no torch, no LMDB.
 *
 * Lifetimes: the blob passed to emit() is valid during the call only.
 */
#ifndef DE_BUILDER_STREAM_H
#define DE_BUILDER_STREAM_H

#include <stddef.h>
#include <stdint.h>

typedef struct bstream bstream;

/* How many sampled inputs a build over n inputs takes: 512, at most n/8
 * (so the sample's forwards stay within an eighth of the pass); 0 when n is
 * too small for a sample to say anything (n < 512): build it with
 * builder_core.h then. */
uint32_t bstream_sample_count(uint32_t n);

/* The s-th sampled input (0 <= s < samples), ids spread evenly over [0, n),
 * ascending in s. */
uint32_t bstream_sample_id(uint32_t n, uint32_t samples, uint32_t s);

/* Bytes the core holds at most for these parameters (the sample included). */
size_t bstream_bytes(uint32_t n, uint64_t neurons, uint32_t partitions, uint32_t mai_count, uint32_t samples);

/* partitions 2..256, mai_count <= n, samples <= n (0: no sample -- every
 * non-MAI input then shares one partition). */
int bstream_new(uint32_t n, uint64_t neurons, uint32_t partitions, uint32_t mai_count, uint32_t samples,
                bstream **out, char *err, size_t errlen);

/* Lets bstream_add, the cuts and bstream_finish use `threads` (1 or 2)
 * threads; the default is 1. */
void bstream_set_threads(bstream *b, int threads);

/* Adds `count` sampled inputs' rows (rows[i*neurons + j] = activation of
 * neuron j), in any order; at most `samples` in all, before the first
 * bstream_add. */
int bstream_sample(bstream *b, const float *rows, uint32_t count, char *err, size_t errlen);

/* Adds `count` consecutive inputs starting at `first` (which must equal the
 * number added so far), rows as in bstream_sample. The first call makes the
 * cuts from the sample taken so far and frees it. */
int bstream_add(bstream *b, const float *rows, uint32_t first, uint32_t count, char *err, size_t errlen);

/* After all N inputs: calls emit(neuron, blob, len, arg) with every neuron's
 * blob (npi.h) in ascending neuron order from the calling thread. emit
 * returning nonzero stops it; bstream_finish then returns -1 with
 * "stopped". */
int bstream_finish(bstream *b, int (*emit)(uint64_t neuron, const void *blob, size_t len, void *arg), void *arg,
                   char *err, size_t errlen);

/* The vector code the pass may use: 0 portable loops, 1 AVX2, 2 AVX-512
 * (the default: the best the CPU has). Returns the level in effect. The
 * partitions are the same at every level; tests run each. */
int bstream_simd(int level);

/* The most bytes the core held. */
size_t bstream_peak_bytes(const bstream *b);

void bstream_free(bstream *b);

/* Times the core on a fixed synthetic layer (8,192 inputs x 256 neurons,
 * ~8 MiB: add and finish, on `threads` threads): what indexing costs on
 * this machine right now, to weigh against forwards timed with it (eager
 * layers, eager.h). Milliseconds; -1 when it could not run. */
double bstream_probe_ms(int threads);

#endif
