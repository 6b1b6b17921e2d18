/* Fatal errors and checked allocation. */
#ifndef TALLY_ERROR_H
#define TALLY_ERROR_H

#include <stddef.h>

/* Print "tally: MESSAGE" to stderr and exit with status 2. */
void fail(const char *format, ...);
void *xmalloc(size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);

#endif
