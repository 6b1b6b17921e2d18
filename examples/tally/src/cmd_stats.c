#include <stdlib.h>

#include "commands.h"
#include "csv.h"
#include "error.h"
#include "numeric.h"
#include "stats.h"

void cmd_stats(const table *t, const char *column, FILE *out) {
    size_t c = table_column(t, column);
    double *values = xmalloc(t->nrows * sizeof(double));
    size_t n = 0;
    for (size_t r = 0; r < t->nrows; r++) {
        const char *cell = table_cell(t, r, c);
        if (!*cell)
            continue; /* empty cells are missing values */
        if (!parse_number(cell, &values[n]))
            fail("row %zu: '%s' in column '%s' is not a number", r + 2, cell, column);
        n++;
    }
    summary s = summarize(values, n);
    free(values);
    char count[32], min[64], max[64], sum[64], mean[64], median[64], stddev[64];
    snprintf(count, sizeof count, "%zu", s.count);
    const char *header[] = {"column", "count", "min", "max", "sum", "mean", "median", "stddev"};
    const char *cells[] = {
        column, count, format_number(s.min, min), format_number(s.max, max),
        format_number(s.sum, sum), format_number(s.mean, mean),
        format_number(s.median, median), format_number(s.stddev, stddev),
    };
    csv_write_row(out, header, 8);
    csv_write_row(out, cells, 8);
}
