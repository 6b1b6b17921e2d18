#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "csv.h"
#include "error.h"

void cmd_select(const table *t, const char *columns, FILE *out) {
    char *names = xstrdup(columns);
    size_t n = 1;
    for (const char *p = names; *p; p++)
        n += *p == ',';
    size_t *index = xmalloc(n * sizeof(size_t));
    const char **header = xmalloc(n * sizeof(char *));
    size_t k = 0;
    for (char *name = strtok(names, ","); name; name = strtok(NULL, ","))
        header[k] = name, index[k++] = table_column(t, name);
    if (k == 0)
        fail("select needs at least one column name");
    csv_write_row(out, header, k);
    const char **cells = xmalloc(k * sizeof(char *));
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t i = 0; i < k; i++)
            cells[i] = table_cell(t, r, index[i]);
        csv_write_row(out, cells, k);
    }
    free(cells);
    free(header);
    free(index);
    free(names);
}
