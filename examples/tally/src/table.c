#include "table.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

void table_init(table *t) {
    memset(t, 0, sizeof *t);
}

static void row_free(row *r) {
    for (size_t i = 0; i < r->count; i++)
        free(r->cells[i]);
    free(r->cells);
}

void table_free(table *t) {
    row_free(&t->header);
    for (size_t i = 0; i < t->nrows; i++)
        row_free(&t->rows[i]);
    free(t->rows);
    table_init(t);
}

void table_add(table *t, row r) {
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->rows = xrealloc(t->rows, t->cap * sizeof(row));
    }
    t->rows[t->nrows++] = r;
}

size_t table_column(const table *t, const char *name) {
    for (size_t i = 0; i < t->header.count; i++)
        if (strcmp(t->header.cells[i], name) == 0)
            return i;
    fail("no column named '%s'", name);
    return 0;
}

const char *table_cell(const table *t, size_t r, size_t c) {
    const row *x = &t->rows[r];
    return c < x->count ? x->cells[c] : "";
}
