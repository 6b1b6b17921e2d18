/* Tries to reach the host: each line says what it got. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static void try_read(const char *path) {
    FILE *f = fopen(path, "r");
    printf("read %s: %s\n", path, f ? "OPENED" : strerror(errno));
    if (f) fclose(f);
}

int main(void) {
    try_read("/etc/passwd");
    try_read("../../../../etc/passwd");
    try_read("/proc/self/environ");
    FILE *f = fopen("data/a.txt", "w");
    printf("write input: %s\n", f ? "OPENED" : strerror(errno));
    f = fopen("new-file", "w");
    printf("create in input root: %s\n", f ? "OPENED" : strerror(errno));
    DIR *d = opendir("/");
    struct dirent *e;
    while (d && (e = readdir(d))) printf("root entry %s\n", e->d_name);
    d = opendir("/..");
    while (d && (e = readdir(d))) printf("parent-of-root entry %s\n", e->d_name);
    return 0;
}
