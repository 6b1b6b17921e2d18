#include "sort.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

static void merge_sort(size_t *a, size_t *tmp, size_t n, index_order order, const void *ctx) {
    if (n < 2)
        return;
    size_t half = n / 2;
    merge_sort(a, tmp, half, order, ctx);
    merge_sort(a + half, tmp, n - half, order, ctx);
    size_t i = 0, j = half, k = 0;
    while (i < half && j < n)
        tmp[k++] = order(a[j], a[i], ctx) < 0 ? a[j++] : a[i++];  /* ties keep order */
    while (i < half)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    memcpy(a, tmp, n * sizeof *a);
}

void sort_indices(size_t *indices, size_t n, index_order order, const void *context) {
    size_t *tmp = xmalloc(n * sizeof *tmp);
    merge_sort(indices, tmp, n, order, context);
    free(tmp);
}
