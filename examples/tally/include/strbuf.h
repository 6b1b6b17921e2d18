/* Growable byte strings. */
#ifndef TALLY_STRBUF_H
#define TALLY_STRBUF_H

#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} strbuf;

void sb_init(strbuf *sb);
void sb_free(strbuf *sb);
void sb_putc(strbuf *sb, char c);
void sb_puts(strbuf *sb, const char *s);
void sb_clear(strbuf *sb);
/* A copy of the contents as a NUL-terminated string the caller frees. */
char *sb_detach(strbuf *sb);

#endif
