/* Reading and writing CSV (RFC 4180: quoted fields, doubled quotes, CRLF). */
#ifndef TALLY_CSV_H
#define TALLY_CSV_H

#include <stdio.h>

#include "table.h"

/* Read all of IN into T; the first record is the header. */
void csv_read(FILE *in, const char *name, table *t);
/* Write one record, quoting fields that need it. */
void csv_write_row(FILE *out, const char *const *cells, size_t count);

#endif
