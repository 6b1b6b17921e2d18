/* Does to its file system what its arguments say, in order, so that tests
 * can make a guest leave any shape of outputs behind:
 *   mkdir PATH | write PATH TEXT | symlink TARGET PATH | rm PATH (file or empty folder)
 * Exits 1 at the first operation that fails. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        int rc = -1;
        if (!strcmp(op, "mkdir") && i + 1 < argc) {
            rc = mkdir(argv[++i], 0755);
        } else if (!strcmp(op, "write") && i + 2 < argc) {
            FILE *f = fopen(argv[i + 1], "w");
            rc = f && fputs(argv[i + 2], f) >= 0 && fclose(f) == 0 ? 0 : -1;
            i += 2;
        } else if (!strcmp(op, "symlink") && i + 2 < argc) {
            rc = symlink(argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (!strcmp(op, "rm") && i + 1 < argc) {
            i++;
            rc = unlink(argv[i]) == 0 || rmdir(argv[i]) == 0 ? 0 : -1;
        }
        if (rc != 0) {
            perror(op);
            return 1;
        }
    }
    return 0;
}
