#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "csv.h"
#include "error.h"
#include "numeric.h"
#include "sort.h"

typedef struct {
    const table *t;
    size_t column;
    const double *numbers; /* NULL: compare as text */
    int descending;
} sort_key;

static int by_key(size_t a, size_t b, const void *context) {
    const sort_key *k = context;
    int d;
    if (k->numbers)
        d = (k->numbers[a] > k->numbers[b]) - (k->numbers[a] < k->numbers[b]);
    else
        d = strcmp(table_cell(k->t, a, k->column), table_cell(k->t, b, k->column));
    return k->descending ? -d : d;
}

void cmd_sort(const table *t, const char *column, FILE *out) {
    sort_key key = {t, 0, NULL, column[0] == '-'};
    key.column = table_column(t, column + key.descending);
    double *numbers = xmalloc((t->nrows ? t->nrows : 1) * sizeof(double));
    int numeric = 1;
    for (size_t r = 0; r < t->nrows && numeric; r++)
        numeric = parse_number(table_cell(t, r, key.column), &numbers[r]);
    key.numbers = numeric ? numbers : NULL;
    size_t *order = xmalloc((t->nrows ? t->nrows : 1) * sizeof(size_t));
    for (size_t r = 0; r < t->nrows; r++)
        order[r] = r;
    sort_indices(order, t->nrows, by_key, &key);
    csv_write_row(out, (const char *const *)t->header.cells, t->header.count);
    for (size_t r = 0; r < t->nrows; r++) {
        const row *x = &t->rows[order[r]];
        csv_write_row(out, (const char *const *)x->cells, x->count);
    }
    free(order);
    free(numbers);
}
