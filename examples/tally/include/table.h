/* A table of text cells: a header row and data rows. */
#ifndef TALLY_TABLE_H
#define TALLY_TABLE_H

#include <stddef.h>

typedef struct {
    char **cells;
    size_t count;
} row;

typedef struct {
    row header;
    row *rows;
    size_t nrows;
    size_t cap;
} table;

void table_init(table *t);
void table_free(table *t);
void table_add(table *t, row r);
/* The index of the column named NAME; fails with a clear message if none. */
size_t table_column(const table *t, const char *name);
/* The cell of row R in column C, or "" when the row is short. */
const char *table_cell(const table *t, size_t r, size_t c);

#endif
