/*
 * kiln-cc: the native launcher of `kiln cc` (built by `./dev cc-client`).
 *
 * Run as `kiln-cc gcc ARGS...`, or through a link named like a compiler,
 * it hands its invocation to the resident cc service (kiln/cc/service.py)
 * over a Unix socket and does what the service answers: write out the
 * streams of a compile the service ran (or found in the cache) and exit
 * with its code, or exec the real compiler. Starting Python costs tens of
 * milliseconds per compile; this costs about one.
 *
 * Its configuration is `kiln-cc.conf` in the folder of the path it was run
 * as (links are not followed: masquerading links sit next to the file),
 * else in the folder of its own executable. Line 1 is the service's socket;
 * each further line is one argument of the fallback command, which is run
 * followed by this program's whole argv whenever the service cannot be
 * used: no service, one that cannot be trusted, one that went away before
 * answering in full, or KILN_SERVER=off in the environment.
 *
 * The service is trusted only if its socket lies in a folder of this user
 * that no one else may enter and its listener runs as this user (the
 * checks of kiln/server/private_socket.h, shared with the server's client).
 *
 * The reply is read whole before anything is written out, so a service
 * that dies mid-reply leaves nothing half-done: the fallback runs instead.
 *
 * Messages (little-endian; see kiln/cc/wire.py): the request is "KCC1",
 * u32 count + strings (argv), string cwd, string launcher, u32 umask,
 * u32 count + strings (environment); a string is a u32 length and its
 * bytes. The reply is u8 kind: 0 (ran) i32 code, string stdout, string
 * stderr; 1 (exec) u32 count + strings (argv).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../server/private_socket.h"

#define CONF_NAME "kiln-cc.conf"
#define CONF_LIMIT (64 * 1024)
#define REQUEST_LIMIT (4u << 20)   /* as wire.REQUEST_LIMIT */
#define STRINGS_LIMIT 100000u      /* as wire.STRINGS_LIMIT */
#define REPLY_STRING_LIMIT (1u << 30)
#define DEFAULT_PATH "/usr/local/bin:/bin:/usr/bin"
#define EXIT_CANNOT_RUN 127

extern char **environ;

struct conf {
    char *socket;
    char **fallback; /* NULL-terminated */
    size_t nfallback;
};

__attribute__((format(printf, 1, 2))) static void say(const char *format, ...) {
    /* One write, so that the lines of parallel compiles do not interleave. */
    char line[4096] = "kiln-cc: ";
    size_t at = strlen(line);
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line + at, sizeof line - at - 1, format, args);
    va_end(args);
    if (n < 0) return;
    at += (size_t)n < sizeof line - at - 1 ? (size_t)n : sizeof line - at - 2;
    line[at++] = '\n';
    ssize_t unused = write(2, line, at);
    (void)unused;
}

/* ------------------------------------------------------------ config */

/* The folder of the file execvp(3) would run for `name` (no '/' in it). */
static char *search_path(const char *name) {
    const char *path = getenv("PATH");
    if (path == NULL) path = DEFAULT_PATH;
    size_t name_len = strlen(name);
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t len = (size_t)(end - p);
        char *dir = len ? strndup(p, len) : strdup(".");
        char *file = dir ? malloc(strlen(dir) + name_len + 2) : NULL;
        if (file != NULL) {
            struct stat st;
            sprintf(file, "%s/%s", dir, name);
            int found = stat(file, &st) == 0 && S_ISREG(st.st_mode) && access(file, X_OK) == 0;
            free(file);
            if (found) return dir;
        }
        free(dir);
        if (*end == '\0') return NULL;
        p = end;
    }
}

static char *read_conf(const char *dir, int *err) {
    size_t len = strlen(dir);
    char *name = malloc(len + sizeof CONF_NAME + 1);
    if (name == NULL) return NULL;
    sprintf(name, "%s/%s", dir, CONF_NAME);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    *err = errno;
    free(name);
    if (fd < 0) return NULL;
    char *text = malloc(CONF_LIMIT + 1);
    if (text == NULL) *err = ENOMEM;
    size_t have = 0;
    while (text != NULL && have < CONF_LIMIT) {
        ssize_t n = read(fd, text + have, CONF_LIMIT - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            *err = errno;
            free(text);
            text = NULL;
        } else if (n == 0) {
            break;
        } else {
            have += (size_t)n;
        }
    }
    close(fd);
    if (text != NULL) text[have] = '\0';
    return text;
}

/* The lines of the configuration: line 1 the socket, then the fallback. */
static int parse_conf(char *text, struct conf *conf) {
    size_t lines = 0;
    for (char *p = text; *p; p++) lines += *p == '\n';
    char **fields = calloc(lines + 2, sizeof *fields);
    if (fields == NULL) return -1;
    size_t n = 0;
    for (char *p = text; *p;) {
        char *end = strchrnul(p, '\n');
        fields[n++] = p;
        if (*end == '\0') break;
        *end = '\0';
        p = end + 1;
    }
    if (n < 2 || fields[0][0] == '\0' || fields[1][0] != '/') {
        free(fields);
        return -1;
    }
    conf->socket = fields[0];
    conf->fallback = fields + 1;
    conf->nfallback = n - 1;
    return 0;
}

static void load_conf(const char *argv0, struct conf *conf) {
    char *dir = NULL;
    if (argv0 != NULL && argv0[0] != '\0')
        dir = strchr(argv0, '/') ? folder_of(argv0) : search_path(argv0);
    int err = ENOENT;
    char *text = dir ? read_conf(dir, &err) : NULL;
    if (text == NULL && err == ENOENT) {
        /* Run through a link elsewhere (or with an odd argv[0]): try the
           folder of the executable itself. */
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = '\0';
            free(dir);
            dir = folder_of(self);
            text = dir ? read_conf(dir, &err) : NULL;
        }
    }
    if (text == NULL) {
        say("cannot read %s/" CONF_NAME ": %s", dir ? dir : "(its folder)", strerror(err));
        exit(EXIT_CANNOT_RUN);
    }
    if (parse_conf(text, conf) != 0) {
        say("%s/" CONF_NAME " is not a socket path and a fallback command, one a line", dir);
        exit(EXIT_CANNOT_RUN);
    }
    free(dir);
}

/* Run the slow path: the fallback command with our whole argv after it. */
static void fall_back(const struct conf *conf, int argc, char **argv) {
    char **args = calloc(conf->nfallback + (size_t)argc + 1, sizeof *args);
    if (args == NULL) {
        say("out of memory");
        exit(EXIT_CANNOT_RUN);
    }
    memcpy(args, conf->fallback, conf->nfallback * sizeof *args);
    memcpy(args + conf->nfallback, argv, (size_t)argc * sizeof *args);
    execv(args[0], args);
    say("cannot run %s: %s", args[0], strerror(errno));
    exit(EXIT_CANNOT_RUN);
}

/* ------------------------------------------------------------ connecting */

/* A connection to the service, or -1 if it is not there or not trusted
   (private_socket.h; why not is left unsaid: the fallback runs). */
static int connect_service(const char *path) {
    struct ucred peer;
    char *why;
    int fd = connect_private(path, &peer, &why);
    free(why);
    return fd;
}

/* ------------------------------------------------------------ request */

struct out {
    unsigned char *data;
    size_t len;
};

static void put_u32(struct out *o, uint32_t v) {
    unsigned char *p = o->data + o->len;
    p[0] = v & 0xff, p[1] = (v >> 8) & 0xff, p[2] = (v >> 16) & 0xff, p[3] = v >> 24;
    o->len += 4;
}

static void put_string(struct out *o, const char *s) {
    size_t n = strlen(s);
    put_u32(o, (uint32_t)n);
    memcpy(o->data + o->len, s, n);
    o->len += n;
}

/* The request's bytes, or NULL if it would pass the service's limits
   (the fallback then handles it). */
static unsigned char *build_request(int argc, char **argv, size_t *len) {
    char *cwd = getcwd(NULL, 0);
    if (cwd == NULL) return NULL; /* (a removed folder: let the fallback say so) */
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    mode_t mask = umask(0);
    umask(mask);

    size_t envc = 0, size = 4 + 4 + 4 + strlen(cwd) + 4 + strlen(self) + 4 + 4;
    for (int i = 0; i < argc; i++) size += 4 + strlen(argv[i]);
    for (char **e = environ; *e; e++, envc++) size += 4 + strlen(*e);
    if (size > REQUEST_LIMIT || (size_t)argc + envc + 2 > STRINGS_LIMIT) {
        free(cwd);
        return NULL;
    }
    struct out o = {malloc(size), 0};
    if (o.data == NULL) {
        free(cwd);
        return NULL;
    }
    memcpy(o.data, "KCC1", 4);
    o.len = 4;
    put_u32(&o, (uint32_t)argc);
    for (int i = 0; i < argc; i++) put_string(&o, argv[i]);
    put_string(&o, cwd);
    put_string(&o, self);
    put_u32(&o, (uint32_t)mask);
    put_u32(&o, (uint32_t)envc);
    for (char **e = environ; *e; e++) put_string(&o, *e);
    free(cwd);
    *len = o.len;
    return o.data;
}

/* ------------------------------------------------------------ reply */

struct in {
    int fd;
    unsigned char buf[65536];
    size_t pos, len;
};

static int take(struct in *r, void *dst, size_t n) {
    unsigned char *d = dst;
    while (n) {
        if (r->pos == r->len) {
            /* Large payloads go straight to their buffer. */
            int direct = n >= sizeof r->buf;
            ssize_t got = read(r->fd, direct ? d : r->buf, direct ? n : sizeof r->buf);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return -1;
            if (direct) {
                d += got, n -= (size_t)got;
                continue;
            }
            r->pos = 0, r->len = (size_t)got;
        }
        size_t k = r->len - r->pos < n ? r->len - r->pos : n;
        memcpy(d, r->buf + r->pos, k);
        r->pos += k, d += k, n -= k;
    }
    return 0;
}

static int take_u32(struct in *r, uint32_t *v) {
    unsigned char b[4];
    if (take(r, b, 4) != 0) return -1;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

/* A string of the reply, NUL-terminated (its length in *len). */
static char *take_string(struct in *r, uint32_t *len) {
    if (take_u32(r, len) != 0 || *len > REPLY_STRING_LIMIT) return NULL;
    char *s = malloc((size_t)*len + 1);
    if (s == NULL) return NULL;
    if (take(r, s, *len) != 0) {
        free(s);
        return NULL;
    }
    s[*len] = '\0';
    return s;
}

/* Print a finished compile's streams and exit with its code; returns only
   if the reply is not whole. */
static void finish_ran(struct in *r) {
    uint32_t code, out_len, err_len;
    if (take_u32(r, &code) != 0) return;
    char *out = take_string(r, &out_len);
    char *err = out ? take_string(r, &err_len) : NULL;
    if (err == NULL) return;
    close(r->fd);
    int failed = write_all(1, out, out_len, 0) != 0;
    failed |= write_all(2, err, err_len, 0) != 0;
    int32_t status = (int32_t)code;
    if (status < 0 || status > 255) status = 1;
    exit(failed && status == 0 ? 1 : status);
}

/* Run the program the service names; returns only if the reply is not whole. */
static void finish_exec(struct in *r) {
    uint32_t argc, len;
    if (take_u32(r, &argc) != 0 || argc == 0 || argc > STRINGS_LIMIT) return;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    if (args == NULL) return;
    for (uint32_t i = 0; i < argc; i++) {
        args[i] = take_string(r, &len);
        if (args[i] == NULL || strlen(args[i]) != len) return; /* (a NUL inside) */
    }
    if (args[0][0] != '/') return;
    close(r->fd);
    execv(args[0], args);
    say("cannot run %s: %s", args[0], strerror(errno));
    exit(EXIT_CANNOT_RUN);
}

int main(int argc, char **argv) {
    struct conf conf;
    load_conf(argc > 0 ? argv[0] : NULL, &conf);
    const char *setting = getenv("KILN_SERVER"); /* "off": never use a server */
    int fd = setting && strcasecmp(setting, "off") == 0 ? -1 : connect_service(conf.socket);
    if (fd < 0) fall_back(&conf, argc, argv);
    size_t len;
    unsigned char *request = build_request(argc, argv, &len);
    if (request == NULL || write_all(fd, request, len, 1) != 0) {
        close(fd);
        fall_back(&conf, argc, argv);
    }
    free(request);
    static struct in reply;
    unsigned char kind;
    reply.fd = fd;
    if (take(&reply, &kind, 1) == 0) {
        if (kind == 0) finish_ran(&reply);
        if (kind == 1) finish_exec(&reply);
    }
    /* The service refused, or went away before its reply was whole:
       nothing has been written or run yet. */
    close(fd);
    fall_back(&conf, argc, argv);
    return EXIT_CANNOT_RUN;
}
