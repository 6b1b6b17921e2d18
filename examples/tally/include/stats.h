/* Summary statistics of a list of numbers. */
#ifndef TALLY_STATS_H
#define TALLY_STATS_H

#include <stddef.h>

typedef struct {
    size_t count;
    double min, max, sum, mean, median, stddev; /* population deviation */
} summary;

/* Summarize VALUES (reordered: they are sorted in place). */
summary summarize(double *values, size_t n);

#endif
