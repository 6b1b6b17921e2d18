#include "csv.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "strbuf.h"

/* One record into R; returns 0 at the end of the input. */
static int read_record(FILE *in, const char *name, long line, row *r) {
    strbuf field;
    sb_init(&field);
    size_t cap = 8;
    r->cells = xmalloc(cap * sizeof(char *));
    r->count = 0;
    int c = getc(in);
    if (c == EOF) {
        free(r->cells);
        return 0;
    }
    for (;;) {
        int quoted = c == '"';
        if (quoted) {
            for (;;) {
                c = getc(in);
                if (c == EOF)
                    fail("%s:%ld: a quoted field is not closed", name, line);
                if (c == '"') {
                    c = getc(in);
                    if (c != '"')
                        break;
                }
                sb_putc(&field, (char)c);
            }
        } else {
            while (c != ',' && c != '\n' && c != '\r' && c != EOF) {
                if (c == '"')
                    fail("%s:%ld: a quote inside an unquoted field", name, line);
                sb_putc(&field, (char)c);
                c = getc(in);
            }
        }
        if (r->count == cap) {
            cap *= 2;
            r->cells = xrealloc(r->cells, cap * sizeof(char *));
        }
        r->cells[r->count++] = sb_detach(&field);
        sb_clear(&field);
        if (c == ',') {
            c = getc(in);
            continue;
        }
        if (c == '\r') {
            c = getc(in);
            if (c != '\n' && c != EOF)
                ungetc(c, in);
        } else if (c != '\n' && c != EOF) {
            fail("%s:%ld: unexpected character after a quoted field", name, line);
        }
        break;
    }
    sb_free(&field);
    return 1;
}

void csv_read(FILE *in, const char *name, table *t) {
    table_init(t);
    long line = 1;
    if (!read_record(in, name, line, &t->header))
        fail("%s: empty input (a header row is needed)", name);
    row r;
    while (read_record(in, name, ++line, &r))
        table_add(t, r);
}

static int needs_quotes(const char *s) {
    return s[strcspn(s, ",\"\r\n")] != '\0';
}

void csv_write_row(FILE *out, const char *const *cells, size_t count) {
    for (size_t i = 0; i < count; i++) {
        if (i)
            putc(',', out);
        const char *s = cells[i];
        if (!needs_quotes(s)) {
            fputs(s, out);
            continue;
        }
        putc('"', out);
        for (; *s; s++) {
            if (*s == '"')
                putc('"', out);
            putc(*s, out);
        }
        putc('"', out);
    }
    putc('\n', out);
}
