/*
 * kiln-sub: how a native step asks its build for steps (recursive builds).
 *
 * It is placed at /kiln/bin/kiln-sub in the sandbox of a step that declares
 * `recursive=True`, next to the socket /kiln/sub/socket, which Kiln's
 * executor serves for that one step (kiln/exec/substep_proxy.py). It knows
 * nothing of builds: it sends its arguments, working folder and environment
 * and then does what the other end asks, inside the sandbox and with the
 * step's own rights only: read a file or list a folder (the inputs of the
 * requested step), run a program and report what it printed (a compiler's
 * header list), write a file (an output of the requested step), replace
 * itself by a program (a command Kiln does not memoize), or print and exit.
 *
 * Usage (the other end reads these):
 *   kiln-sub cc COMPILER ARGS...    a compiler launcher, e.g. make CC="kiln-sub cc gcc"
 *   kiln-sub run [OPTIONS] -- PROGRAM ARGS...
 *
 * Messages, both ways: a u32 big-endian count of bytes, then fields, each a
 * u32 big-endian length and its bytes. The first field names the message.
 * To Kiln: "hello" cwd argv... "\0" env...; "data" mode bytes; "entries"
 * (name kind)...; "ran" code stdout stderr; "ok"; "error" errno text.
 * From Kiln: "read" path; "list" path; "run" argv...; "write" path mode
 * bytes; "exec" argv...; "exit" code stdout stderr.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define SOCKET_PATH "/kiln/sub/socket"
#define MESSAGE_LIMIT (1u << 30)
#define EXIT_TROUBLE 125

extern char **environ;

struct buf {
    unsigned char *data;
    size_t len, cap;
};

static void die(const char *what) {
    fprintf(stderr, "kiln-sub: %s: %s\n", what, strerror(errno));
    exit(EXIT_TROUBLE);
}

static void grow(struct buf *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    unsigned char *data = realloc(b->data, cap);
    if (!data) die("out of memory");
    b->data = data;
    b->cap = cap;
}

static void put_u32(struct buf *b, uint32_t v) {
    grow(b, 4);
    b->data[b->len++] = (unsigned char)(v >> 24);
    b->data[b->len++] = (unsigned char)(v >> 16);
    b->data[b->len++] = (unsigned char)(v >> 8);
    b->data[b->len++] = (unsigned char)v;
}

static void put_field(struct buf *b, const void *data, size_t len) {
    put_u32(b, (uint32_t)len);
    grow(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_str(struct buf *b, const char *s) { put_field(b, s, strlen(s)); }

static void put_number(struct buf *b, long v) {
    char text[32];
    snprintf(text, sizeof text, "%ld", v);
    put_str(b, text);
}

static void write_all(int fd, const void *data, size_t len) {
    const unsigned char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("writing");
        p += n;
        len -= (size_t)n;
    }
}

/* Send a message: the fields collected in `b` (its length goes first). */
static void send_message(int sock, struct buf *b) {
    unsigned char head[4] = {(unsigned char)(b->len >> 24), (unsigned char)(b->len >> 16),
                             (unsigned char)(b->len >> 8), (unsigned char)b->len};
    write_all(sock, head, 4);
    write_all(sock, b->data, b->len);
    b->len = 0;
}

static int read_all(int fd, void *data, size_t len) {
    unsigned char *p = data;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One message from Kiln, split into NUL-terminated fields (kept until the
 * next message). Exits if Kiln went away or sent something malformed. */
struct message {
    unsigned char *raw;  /* the message as received */
    char *text;          /* its fields, each followed by a NUL */
    char **field;
    size_t *size;
    size_t count;
};

static void read_message(int sock, struct message *m) {
    unsigned char head[4];
    free(m->raw);
    free(m->text);
    free(m->field);
    free(m->size);
    memset(m, 0, sizeof *m);
    if (read_all(sock, head, 4) != 0) {
        fprintf(stderr, "kiln-sub: the build closed the connection\n");
        exit(EXIT_TROUBLE);
    }
    uint32_t len = get_u32(head);
    if (len > MESSAGE_LIMIT) {
        fprintf(stderr, "kiln-sub: message too large\n");
        exit(EXIT_TROUBLE);
    }
    size_t max = len / 4 + 1; /* each field takes at least its 4-byte length */
    m->raw = malloc((size_t)len + 1);
    m->text = malloc((size_t)len + max + 1);
    m->field = calloc(max + 1, sizeof *m->field);
    m->size = calloc(max + 1, sizeof *m->size);
    if (!m->raw || !m->text || !m->field || !m->size) die("out of memory");
    if (read_all(sock, m->raw, len) != 0) die("reading");
    size_t at = 0;
    char *out = m->text;
    while (at < len) {
        if (len - at < 4) goto malformed;
        uint32_t n = get_u32(m->raw + at);
        at += 4;
        if (n > len - at) goto malformed;
        memcpy(out, m->raw + at, n);
        out[n] = 0;
        m->field[m->count] = out;
        m->size[m->count++] = n;
        out += n + 1;
        at += n;
    }
    return;
malformed:
    fprintf(stderr, "kiln-sub: malformed message from the build\n");
    exit(EXIT_TROUBLE);
}

static void reply_error(int sock, struct buf *b, const char *what) {
    put_str(b, "error");
    put_number(b, errno);
    put_str(b, what);
    send_message(sock, b);
}

static void do_read(int sock, struct buf *b, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        reply_error(sock, b, path);
        if (fd >= 0) close(fd);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        errno = EISDIR;
        reply_error(sock, b, path);
        return;
    }
    struct buf content = {0};
    for (;;) {
        grow(&content, 65536);
        ssize_t n = read(fd, content.data + content.len, 65536);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            close(fd);
            free(content.data);
            reply_error(sock, b, path);
            return;
        }
        if (n == 0) break;
        content.len += (size_t)n;
    }
    close(fd);
    put_str(b, "data");
    put_number(b, (long)(st.st_mode & 07777));
    put_field(b, content.data, content.len);
    free(content.data);
    send_message(sock, b);
}

static void do_list(int sock, struct buf *b, const char *path) {
    DIR *dir = opendir(path);
    if (!dir) {
        reply_error(sock, b, path);
        return;
    }
    put_str(b, "entries");
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st; /* links followed: a step's inputs are links in /work */
        if (fstatat(dirfd(dir), e->d_name, &st, 0) != 0) continue;
        put_str(b, e->d_name);
        put_str(b, S_ISDIR(st.st_mode) ? "dir" : S_ISREG(st.st_mode) ? "file" : "other");
    }
    closedir(dir);
    send_message(sock, b);
}

/* Read a whole pipe into `out`. */
static void drain(int fd, struct buf *out) {
    for (;;) {
        grow(out, 65536);
        ssize_t n = read(fd, out->data + out->len, 65536);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        out->len += (size_t)n;
    }
    close(fd);
}

static void do_run(int sock, struct buf *b, char **argv) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        execvp(argv[0], argv);
        fprintf(stderr, "kiln-sub: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    /* stderr is read after stdout: a compiler's listing goes to stdout and
     * its complaints, which are short, fit in the pipe meanwhile. */
    struct buf o = {0}, e = {0};
    drain(out[0], &o);
    drain(err[0], &e);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    long code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    put_str(b, "ran");
    put_number(b, code);
    put_field(b, o.data ? o.data : (unsigned char *)"", o.len);
    put_field(b, e.data ? e.data : (unsigned char *)"", e.len);
    free(o.data);
    free(e.data);
    send_message(sock, b);
}

/* Make the folders above `path` (relative or absolute). */
static void make_parents(const char *path) {
    char copy[PATH_MAX];
    if (strlen(path) >= sizeof copy) return;
    strcpy(copy, path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(copy, 0777);
        *p = '/';
    }
}

static void do_write(int sock, struct buf *b, const char *path, const char *mode,
                     const unsigned char *data, size_t len) {
    make_parents(path);
    /* A file already there (or a link planted there) is replaced, never
     * written through: the new file is made beside it and renamed over it. */
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.kiln-sub-%ld", path, (long)getpid()) >= sizeof tmp) {
        errno = ENAMETOOLONG;
        reply_error(sock, b, path);
        return;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)strtol(mode, NULL, 8));
    if (fd < 0) {
        reply_error(sock, b, path);
        return;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            close(fd);
            unlink(tmp);
            reply_error(sock, b, path);
            return;
        }
        done += (size_t)n;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        reply_error(sock, b, path);
        return;
    }
    put_str(b, "ok");
    send_message(sock, b);
}

int main(int argc, char **argv) {
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, SOCKET_PATH);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        fprintf(stderr,
                "kiln-sub: cannot reach the build at %s: %s (does the step declare "
                "recursive=True?)\n",
                SOCKET_PATH, strerror(errno));
        return EXIT_TROUBLE;
    }
    struct buf b = {0};
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) die("getcwd");
    put_str(&b, "hello");
    put_str(&b, cwd);
    for (int i = 1; i < argc; i++) put_str(&b, argv[i]);
    put_field(&b, "", 0); /* the empty field between arguments and environment */
    for (char **e = environ; *e; e++) put_str(&b, *e);
    send_message(sock, &b);

    struct message m = {0};
    for (;;) {
        read_message(sock, &m);
        if (m.count == 0) continue;
        const char *op = m.field[0];
        if (!strcmp(op, "read") && m.count == 2) {
            do_read(sock, &b, m.field[1]);
        } else if (!strcmp(op, "list") && m.count == 2) {
            do_list(sock, &b, m.field[1]);
        } else if (!strcmp(op, "run") && m.count >= 2) {
            do_run(sock, &b, m.field + 1);
        } else if (!strcmp(op, "write") && m.count == 4) {
            do_write(sock, &b, m.field[1], m.field[2], (unsigned char *)m.field[3], m.size[3]);
        } else if (!strcmp(op, "exec") && m.count >= 2) {
            close(sock);
            execvp(m.field[1], m.field + 1);
            fprintf(stderr, "kiln-sub: cannot run %s: %s\n", m.field[1], strerror(errno));
            return 127;
        } else if (!strcmp(op, "exit") && m.count == 4) {
            write_all(1, m.field[2], m.size[2]);
            write_all(2, m.field[3], m.size[3]);
            return (int)strtol(m.field[1], NULL, 10);
        } else {
            fprintf(stderr, "kiln-sub: unexpected message %s\n", op);
            return EXIT_TROUBLE;
        }
    }
}
