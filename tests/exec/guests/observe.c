/* Prints everything a guest could use to tell runs or hosts apart. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

extern char **environ;

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = environ; *e; e++) printf("env %s\n", *e);
    struct timespec rt, m1, m2, res;
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &m1);
    clock_gettime(CLOCK_MONOTONIC, &m2);
    clock_getres(CLOCK_MONOTONIC, &res);
    printf("realtime %lld.%09ld\n", (long long)rt.tv_sec, rt.tv_nsec);
    printf("monotonic %lld %lld res %ld\n", (long long)(m1.tv_sec * 1000000000LL + m1.tv_nsec),
           (long long)(m2.tv_sec * 1000000000LL + m2.tv_nsec), res.tv_nsec);
    unsigned char buf[16];
    arc4random_buf(buf, sizeof buf);
    printf("random ");
    for (size_t i = 0; i < sizeof buf; i++) printf("%02x", buf[i]);
    printf("\n");
    DIR *d = opendir("data");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        struct stat st;
        char path[256];
        snprintf(path, sizeof path, "data/%s", e->d_name);
        stat(path, &st);
        printf("entry %s ino=%llu size=%lld mtime=%lld\n", e->d_name, (unsigned long long)st.st_ino,
               (long long)st.st_size, (long long)st.st_mtime);
    }
    mkdir("out", 0755); /* REAPI: the command creates its output directories */
    FILE *out = fopen("out/report.txt", "w");
    if (!out) { perror("out/report.txt"); return 2; }
    fprintf(out, "argc=%d\n", argc);
    fclose(out);
    FILE *tmp = fopen("/tmp/scratch", "w");
    printf("tmp %s\n", tmp ? "writable" : "refused");
    if (tmp) fclose(tmp);
    return 0;
}
