/* Exercises most of WASI preview 1 and reports what it saw, so that two
 * engines can be compared on everything a guest observes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void report(const char *what, int rc) {
    printf("%s: %s\n", what, rc == 0 ? "ok" : strerror(errno));
}

static void list(const char *path) {
    DIR *d = opendir(path);
    if (!d) { printf("opendir %s: %s\n", path, strerror(errno)); return; }
    struct dirent *e;
    while ((e = readdir(d))) {
        char full[512];
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        int rc = lstat(full, &st);
        printf("  %s/%s type=%d ino=%llu size=%lld rc=%d\n", path, e->d_name, e->d_type,
               (unsigned long long)e->d_ino, rc ? -1LL : (long long)st.st_size, rc);
    }
    closedir(d);
}

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    report("mkdir out", mkdir("out", 0755));
    report("mkdir out/sub/deep (no parent)", mkdir("out/sub/deep", 0755));
    report("mkdir out/sub", mkdir("out/sub", 0755));
    report("mkdir out/sub/deep", mkdir("out/sub/deep", 0755));
    report("mkdir in the inputs", mkdir("data/new", 0755));

    FILE *f = fopen("out/a.txt", "w");
    fprintf(f, "first line\n");
    fclose(f);
    f = fopen("out/a.txt", "a");
    fprintf(f, "appended\n");
    fclose(f);

    int fd = open("out/sparse.bin", O_CREAT | O_RDWR | O_TRUNC, 0644);
    lseek(fd, 100, SEEK_SET);
    write(fd, "end", 3);
    pwrite(fd, "mid", 3, 50);
    char buf[8] = {0};
    pread(fd, buf, 3, 50);
    printf("pread: %s, size %lld\n", buf, (long long)lseek(fd, 0, SEEK_END));
    ftruncate(fd, 80);
    printf("after truncate: %lld\n", (long long)lseek(fd, 0, SEEK_END));
    close(fd);

    fd = open("out/a.txt", O_CREAT | O_EXCL | O_WRONLY, 0644);
    printf("exclusive create of an existing file: %s\n", fd < 0 ? strerror(errno) : "opened");

    f = fopen("/tmp/scratch.txt", "w");
    fprintf(f, "made in /tmp\n");
    fclose(f);
    report("rename /tmp -> out", rename("/tmp/scratch.txt", "out/sub/moved.txt"));
    report("symlink", symlink("../a.txt", "out/sub/link"));
    char target[64] = {0};
    ssize_t n = readlink("out/sub/link", target, sizeof target - 1);
    printf("readlink: %zd %s\n", n, target);
    f = fopen("out/sub/link", "r");
    char line[64] = {0};
    if (f) { fgets(line, sizeof line, f); fclose(f); }
    printf("through the link: %s", line);
    report("rmdir non-empty", rmdir("out/sub"));
    report("rmdir out/sub/deep", rmdir("out/sub/deep"));
    f = fopen("out/gone", "w");
    fclose(f);
    report("unlink out/gone", unlink("out/gone"));
    report("unlink an input", unlink("data/a.txt"));
    report("open a missing file", open("nope", O_RDONLY) < 0 ? -1 : 0);

    f = fopen("data/c.bin", "rb");
    fseek(f, 0, SEEK_END);
    printf("c.bin size via seek: %ld\n", ftell(f));
    fseek(f, 10, SEEK_SET);
    printf("c.bin byte 10: %d\n", fgetc(f));
    fclose(f);

    struct stat st;
    stat("data", &st);
    printf("data: dir=%d ino=%llu mtime=%lld\n", S_ISDIR(st.st_mode), (unsigned long long)st.st_ino,
           (long long)st.st_mtime);
    list("data");
    list("out");
    list("out/sub");
    list("data/sub/..");

    unsigned char rnd[100];
    getentropy(rnd, sizeof rnd);
    unsigned sum = 0;
    for (int i = 0; i < 100; i++) sum = sum * 31 + rnd[i];
    printf("random checksum %08x\n", sum);

    struct timespec before, after, nap = {1, 500000000};
    clock_gettime(CLOCK_MONOTONIC, &before);
    nanosleep(&nap, NULL);
    clock_gettime(CLOCK_MONOTONIC, &after);
    printf("slept %lld ns (virtual)\n", (long long)((after.tv_sec - before.tv_sec) * 1000000000LL +
                                                  (after.tv_nsec - before.tv_nsec)));
    printf("realtime %lld\n", (long long)time(NULL));

    double x = 0.1;
    for (int i = 0; i < 1000; i++) x = sin(x) * 1.7 + sqrt(x + 2.0) / 3.0;
    printf("float %a\n", x);

    f = fopen("out/report.txt", "w");
    fprintf(f, "done\n");
    fclose(f);
    fprintf(stderr, "a line on stderr\n");
    exit(3);
}
