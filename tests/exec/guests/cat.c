/* cat OUT IN...: writes the inputs, one after the other, to OUT (nothing
 * when there are none). Exits 3 if an input starts with "FAIL". */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *out = fopen(argv[1], "w");
    if (!out) { perror(argv[1]); return 1; }
    for (int i = 2; i < argc; i++) {
        FILE *in = fopen(argv[i], "r");
        if (!in) { perror(argv[i]); return 1; }
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
            if (strncmp(buf, "FAIL", 4) == 0) { fprintf(stderr, "cat: %s says FAIL\n", argv[i]); return 3; }
            fwrite(buf, 1, n, out);
        }
        fclose(in);
    }
    return fclose(out) != 0;
}
