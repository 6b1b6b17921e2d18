/* requester REQUEST [FILE...]: asks the build for the step the JSON
 * REQUEST describes (kiln.h, kiln_step; "@PATH": the JSON in file PATH),
 * then prints "exit N", the step's stdout, and each FILE (e.g. an output
 * of the step, under its mount).
 * A refused start prints "errno N" and exits 0. */
#include <stdio.h>
#include "../../../src/kiln/guest/kiln.h"

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    uint32_t code = 0, copied = 0;
    static char buf[65536];
    const char *request = argv[1];
    if (request[0] == '@') {
        FILE *f = fopen(request + 1, "r");
        if (!f) { perror(request + 1); return 1; }
        buf[fread(buf, 1, sizeof buf - 1, f)] = 0;
        fclose(f);
        request = buf;
    }
    int64_t handle = kiln_step(request, &code);
    if (handle < 0) {
        printf("errno %d\n", (int)-handle);
        return 0;
    }
    printf("exit %u\n", code);
    if (kiln_step_read((uint32_t)handle, 1, buf, sizeof buf, &copied) == 0)
        fwrite(buf, 1, copied, stdout);
    kiln_step_release((uint32_t)handle);
    for (int i = 2; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) { printf("cannot open %s\n", argv[i]); continue; }
        size_t n = fread(buf, 1, sizeof buf, f);
        fwrite(buf, 1, n, stdout);
        fclose(f);
    }
    return 0;
}
