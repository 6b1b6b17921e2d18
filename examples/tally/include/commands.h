/* The tally commands. Each reads table T and writes CSV to OUT. */
#ifndef TALLY_COMMANDS_H
#define TALLY_COMMANDS_H

#include <stdio.h>

#include "table.h"

/* count,min,max,sum,mean,median,stddev of a numeric column (non-numbers
 * are an error naming their row). */
void cmd_stats(const table *t, const char *column, FILE *out);
/* Each distinct value of a column with its count, most frequent first
 * (ties by value). */
void cmd_count(const table *t, const char *column, FILE *out);
/* The named columns (comma-separated), in that order. */
void cmd_select(const table *t, const char *columns, FILE *out);
/* All rows ordered by a column: numerically when every cell is a number,
 * else as text; stable; "-" before the name sorts descending. */
void cmd_sort(const table *t, const char *column, FILE *out);

#endif
