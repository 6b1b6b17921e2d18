#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "csv.h"
#include "hashmap.h"
#include "sort.h"

static int by_count_then_value(size_t a, size_t b, const void *context) {
    const counter *items = context;
    if (items[a].count != items[b].count)
        return items[a].count > items[b].count ? -1 : 1;
    return strcmp(items[a].key, items[b].key);
}

void cmd_count(const table *t, const char *column, FILE *out) {
    size_t c = table_column(t, column);
    hashmap m;
    hashmap_init(&m);
    for (size_t r = 0; r < t->nrows; r++)
        hashmap_add(&m, table_cell(t, r, c));
    counter *items = hashmap_items(&m);
    size_t *order = malloc((m.size ? m.size : 1) * sizeof(size_t));
    for (size_t i = 0; i < m.size; i++)
        order[i] = i;
    sort_indices(order, m.size, by_count_then_value, items);
    const char *header[] = {column, "count"};
    csv_write_row(out, header, 2);
    for (size_t i = 0; i < m.size; i++) {
        char count[32];
        snprintf(count, sizeof count, "%zu", items[order[i]].count);
        const char *cells[] = {items[order[i]].key, count};
        csv_write_row(out, cells, 2);
    }
    free(order);
    free(items);
    hashmap_free(&m);
}
