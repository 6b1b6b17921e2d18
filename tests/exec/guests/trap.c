/* Writes an output and a line to stderr, then traps. */
#include <stdio.h>
#include <sys/stat.h>

int main(void) {
    mkdir("out", 0755);
    FILE *f = fopen("out/partial.txt", "w");
    fprintf(f, "written before the trap\n");
    fclose(f);
    fprintf(stderr, "about to trap\n");
    __builtin_trap();
}
