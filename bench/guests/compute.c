/* A compute-heavy guest for bench/wasm_compute.py, built both for wasm32-wasi
 * and natively. Each round of the main loop mixes three kinds of work:
 *
 *   - an integer hash over a 64 KiB buffer, which is then scrambled;
 *   - sorting 512 keys drawn from the buffer (a hand-written heap sort);
 *   - double-precision math: a 24x24 matrix product and a step of a small
 *     n-body simulation (only +, -, *, / and sqrt, which IEEE 754 rounds
 *     exactly, so the wasm and native builds compute the same bits).
 *
 * usage: compute ROUNDS; prints one checksum line. The round count comes from
 * the command line so the compiler cannot fold the work away.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define BUF_WORDS (64 * 1024 / 8)
#define SORT_KEYS 512
#define MAT 24
#define BODIES 16

static uint64_t buf[BUF_WORDS];
static uint32_t keys[SORT_KEYS];
static double ma[MAT][MAT], mb[MAT][MAT], mc[MAT][MAT];
static double pos[BODIES][3], vel[BODIES][3], mass[BODIES];

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t next_random(void) {
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Hash the buffer, then rewrite every word from its neighbour and the hash. */
static uint64_t hash_buffer(uint64_t seed) {
    uint64_t h = seed;
    for (uint32_t i = 0; i < BUF_WORDS; i++) {
        h = mix(h, buf[i]);
    }
    uint64_t carry = h;
    for (uint32_t i = 0; i < BUF_WORDS; i++) {
        uint64_t w = buf[i];
        buf[i] = (w << 7 | w >> 57) ^ carry;
        carry = carry * 6364136223846793005ull + w;
    }
    return h;
}

static void sift_down(uint32_t *a, uint32_t root, uint32_t n) {
    for (;;) {
        uint32_t child = 2 * root + 1;
        if (child >= n) {
            return;
        }
        if (child + 1 < n && a[child + 1] > a[child]) {
            child++;
        }
        if (a[root] >= a[child]) {
            return;
        }
        uint32_t t = a[root];
        a[root] = a[child];
        a[child] = t;
        root = child;
    }
}

static void heap_sort(uint32_t *a, uint32_t n) {
    for (uint32_t i = n / 2; i-- > 0;) {
        sift_down(a, i, n);
    }
    for (uint32_t end = n - 1; end > 0; end--) {
        uint32_t t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(a, 0, end);
    }
}

/* Sort keys taken from the buffer; a checksum that depends on the order. */
static uint64_t sort_keys(uint32_t round) {
    for (uint32_t i = 0; i < SORT_KEYS; i++) {
        keys[i] = (uint32_t)(buf[(i * 37 + round) % BUF_WORDS] >> 16);
    }
    heap_sort(keys, SORT_KEYS);
    uint64_t h = 0;
    for (uint32_t i = 0; i < SORT_KEYS; i++) {
        if (i > 0 && keys[i - 1] > keys[i]) {
            abort();
        }
        h = h * 31 + keys[i];
    }
    return h;
}

/* mc = ma * mb, then feed a damped mc back into ma so every round differs. */
static double matrix_round(void) {
    for (int i = 0; i < MAT; i++) {
        for (int j = 0; j < MAT; j++) {
            double s = 0.0;
            for (int k = 0; k < MAT; k++) {
                s += ma[i][k] * mb[k][j];
            }
            mc[i][j] = s;
        }
    }
    double trace = 0.0;
    for (int i = 0; i < MAT; i++) {
        trace += mc[i][i];
        for (int j = 0; j < MAT; j++) {
            ma[i][j] = 0.5 * ma[i][j] + mc[i][j] / (1.0 + fabs(mc[i][j]));
        }
    }
    return trace;
}

/* One leapfrog step of a softened gravitational n-body system; its energy. */
static double nbody_step(double dt) {
    for (int i = 0; i < BODIES; i++) {
        for (int j = i + 1; j < BODIES; j++) {
            double dx = pos[i][0] - pos[j][0];
            double dy = pos[i][1] - pos[j][1];
            double dz = pos[i][2] - pos[j][2];
            double d2 = dx * dx + dy * dy + dz * dz + 0.01;
            double inv = 1.0 / (d2 * sqrt(d2));
            double fi = mass[j] * inv * dt, fj = mass[i] * inv * dt;
            vel[i][0] -= dx * fi;
            vel[i][1] -= dy * fi;
            vel[i][2] -= dz * fi;
            vel[j][0] += dx * fj;
            vel[j][1] += dy * fj;
            vel[j][2] += dz * fj;
        }
    }
    double energy = 0.0;
    for (int i = 0; i < BODIES; i++) {
        for (int c = 0; c < 3; c++) {
            pos[i][c] += vel[i][c] * dt;
        }
        energy += 0.5 * mass[i] *
                  (vel[i][0] * vel[i][0] + vel[i][1] * vel[i][1] + vel[i][2] * vel[i][2]);
    }
    return energy;
}

static double unit_random(void) {
    return (double)(next_random() >> 11) / 9007199254740992.0; /* [0, 1) */
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: compute ROUNDS\n");
        return 2;
    }
    uint32_t rounds = (uint32_t)strtoul(argv[1], NULL, 10);
    rng_state ^= rounds;

    for (uint32_t i = 0; i < BUF_WORDS; i++) {
        buf[i] = next_random();
    }
    for (int i = 0; i < MAT; i++) {
        for (int j = 0; j < MAT; j++) {
            ma[i][j] = unit_random() - 0.5;
            mb[i][j] = unit_random() - 0.5;
        }
    }
    for (int i = 0; i < BODIES; i++) {
        for (int c = 0; c < 3; c++) {
            pos[i][c] = 10.0 * unit_random() - 5.0;
            vel[i][c] = unit_random() - 0.5;
        }
        mass[i] = 0.5 + unit_random();
    }

    uint64_t ints = 0;
    double trace_sum = 0.0, energy_sum = 0.0;
    for (uint32_t r = 0; r < rounds; r++) {
        ints = mix(ints, hash_buffer(r));
        ints = mix(ints, sort_keys(r));
        trace_sum += matrix_round();
        energy_sum += nbody_step(0.001);
    }

    /* The doubles go into the checksum via their exact bit patterns, and
     * rounded for reading; both builds must agree on both. */
    union {
        double d;
        uint64_t u;
    } t = {trace_sum}, e = {energy_sum};
    uint64_t check = mix(mix(ints, t.u), e.u);
    printf("rounds %u checksum %016llx trace %.6e energy %.6e\n", rounds,
           (unsigned long long)check, trace_sum, energy_sum);
    return 0;
}
