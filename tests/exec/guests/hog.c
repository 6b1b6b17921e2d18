/* Allocates until the memory limit stops it, then aborts (a trap). */
#include <stdlib.h>
#include <string.h>

char *volatile keep; /* volatile: the compiler may not drop the allocations */

int main(void) {
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) abort();
        memset(p, 1, 1 << 20);
        keep = p;
    }
}
