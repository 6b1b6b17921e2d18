/* A stable merge sort of row indices. */
#ifndef TALLY_SORT_H
#define TALLY_SORT_H

#include <stddef.h>

/* Negative, zero or positive as row A sorts before, with or after row B. */
typedef int (*index_order)(size_t a, size_t b, const void *context);

void sort_indices(size_t *indices, size_t n, index_order order, const void *context);

#endif
