#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

void sb_init(strbuf *sb) {
    sb->data = NULL;
    sb->len = 0;
    sb->cap = 0;
}

void sb_free(strbuf *sb) {
    free(sb->data);
    sb_init(sb);
}

static void grow(strbuf *sb, size_t extra) {
    if (sb->len + extra + 1 <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : 16;
    while (cap < sb->len + extra + 1)
        cap *= 2;
    sb->data = xrealloc(sb->data, cap);
    sb->cap = cap;
}

void sb_putc(strbuf *sb, char c) {
    grow(sb, 1);
    sb->data[sb->len++] = c;
    sb->data[sb->len] = '\0';
}

void sb_puts(strbuf *sb, const char *s) {
    size_t n = strlen(s);
    grow(sb, n);
    memcpy(sb->data + sb->len, s, n + 1);
    sb->len += n;
}

void sb_clear(strbuf *sb) {
    sb->len = 0;
    if (sb->data)
        sb->data[0] = '\0';
}

char *sb_detach(strbuf *sb) {
    char *copy = xmalloc(sb->len + 1);
    memcpy(copy, sb->data ? sb->data : "", sb->len);
    copy[sb->len] = '\0';
    return copy;
}
