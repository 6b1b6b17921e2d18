/* slow N OUT: spins N million iterations, then writes OUT. A step that
 * takes a while, for scheduling tests. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    volatile unsigned long x = 0;
    unsigned long n = strtoul(argv[1], NULL, 10) * 1000000UL;
    for (unsigned long i = 0; i < n; i++) x += i;
    FILE *f = fopen(argv[2], "w");
    if (!f) return 1;
    fprintf(f, "%lu\n", (unsigned long)(x & 1));
    return fclose(f) != 0;
}
