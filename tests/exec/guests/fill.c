/* fill MODE ...: writes files to test a step's disk limit.
 *   fill write PATH MIB         write MIB MiB to PATH
 *   fill spread DIR FILES MIB   write FILES files of MIB MiB each in DIR (made here)
 *   fill churn MIB ROUNDS       ROUNDS times: write MIB MiB to /tmp/churn, remove it
 *   fill sparse PATH MIB        one byte at offset MIB MiB of PATH (a hole before it)
 *   fill unlinked MIB           write MIB MiB to a file removed while still open
 * Prints what it did; exits 1 when a call fails (with its error). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char chunk[1 << 16];

static void fail(const char *what) {
    perror(what);
    exit(1);
}

static void write_mib(int fd, long mib) {
    for (long i = 0; i < mib * 16; i++) {
        memset(chunk, 'a' + (int)(i % 26), sizeof chunk);
        if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) fail("write");
    }
}

static void write_file(const char *path, long mib) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) fail(path);
    write_mib(fd, mib);
    if (close(fd) != 0) fail("close");
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[1];
    if (strcmp(mode, "write") == 0 && argc == 4) {
        write_file(argv[2], atol(argv[3]));
    } else if (strcmp(mode, "spread") == 0 && argc == 5) {
        if (mkdir(argv[2], 0755) != 0) fail(argv[2]);
        for (long i = 0; i < atol(argv[3]); i++) {
            char path[256];
            snprintf(path, sizeof path, "%s/f%03ld", argv[2], i);
            write_file(path, atol(argv[4]));
        }
    } else if (strcmp(mode, "churn") == 0 && argc == 4) {
        for (long i = 0; i < atol(argv[3]); i++) {
            write_file("/tmp/churn", atol(argv[2]));
            if (unlink("/tmp/churn") != 0) fail("unlink");
        }
    } else if (strcmp(mode, "sparse") == 0 && argc == 4) {
        int fd = open(argv[2], O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0) fail(argv[2]);
        if (lseek(fd, atol(argv[3]) << 20, SEEK_SET) < 0) fail("lseek");
        if (write(fd, "x", 1) != 1) fail("write");
        close(fd);
    } else if (strcmp(mode, "unlinked") == 0) {
        int fd = open("/tmp/gone", O_CREAT | O_RDWR | O_TRUNC, 0644);
        if (fd < 0 || unlink("/tmp/gone") != 0) fail("/tmp/gone");
        write_mib(fd, atol(argv[2]));
        close(fd);
    } else {
        return 2;
    }
    printf("%s done\n", mode);
    return 0;
}
