/*
 * kiln: the native client of Kiln's resident server (built by
 * `./dev kiln-client`, installed by `kiln server install-client FOLDER` as
 * FOLDER/kiln next to its settings, FOLDER/kiln.conf).
 *
 * A `kiln build` started from Python spends tens of milliseconds before it
 * reaches the server; this program hands `kiln build`, `kiln check` and
 * `kiln gocacheprog` over in about two, doing what `delegate()` in
 * kiln/server/client.py does, and runs Kiln in Python (the fallback
 * command) for everything else:
 *
 *  - Leading `-C DIR` options are applied first, as kiln.cli.entry does;
 *    one that fails is left, with what follows, to the fallback.
 *  - Another command, KILN_SERVER=off, or a store other than the one the
 *    settings name (KILN_HOME, else XDG_CACHE_HOME/kiln, else
 *    ~/.cache/kiln, as kiln.store.db.default_home): the fallback runs.
 *  - The server's socket is used only if its folder is a folder of this
 *    user that no other user may enter, the socket is a socket of this
 *    user, and the process listening on it runs as this user with the pid
 *    the server recorded next to the socket (NAME.pid for NAME.sock).
 *    Nothing is sent otherwise; a check failed for ownership or
 *    permissions (not a socket that is simply missing) is named in one
 *    warning, and the fallback runs.
 *  - The request is one JSON line (argv, folder, environment, umask), sent
 *    with descriptors 0, 1 and 2. Answers are JSON lines: a refusal (the
 *    fallback runs, or, after a forwarded signal, this exits 128+signal),
 *    output to print with the exit code, or "started" and later the exit
 *    code. SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded meanwhile.
 *
 * kiln.conf, read from the folder of this program's own file: line 1 the
 * server's socket, line 2 the store's real path, then the fallback
 * command, one argument a line. The fallback runs with the command line
 * (less the -C options applied) after it; when the server was asked first
 * (or found untrustworthy), KILN_SERVER_TRIED=1 in its environment tells it
 * not to look again.
 *
 * Strings are sent as JSON text: valid UTF-8 as it is, and each byte that
 * is not part of valid UTF-8 as \udcXX (Python's surrogateescape), which
 * the server turns back into the same byte. In the answers' text, \udc80
 * to \udcff stand for such bytes likewise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "private_socket.h"

#define CONF_NAME "kiln.conf"
#define CONF_LIMIT (64 * 1024)
#define LINE_LIMIT (4u << 20) /* as client.REQUEST_LIMIT: a request, or an answer */
#define EXIT_SETUP 2          /* the settings, or the fallback they name, are unusable */
#define TRIED "KILN_SERVER_TRIED"
/* The hint of a settings error names the command that writes them; that
   command also recognises this program (a file it may replace) by it. */
#define INSTALL_COMMAND "kiln server install-client"

extern char **environ;

/* Which of descriptors 0-2 were closed when this started: they are held
   open on /dev/null meanwhile (so that no descriptor of this program's
   takes their number, and the server's command gets /dev/null, as from
   the Python client), and closed again for the fallback. */
static int closed_stdio[3];

struct conf {
    char *folder;
    char *socket;
    char *home;
    char **fallback; /* NULL-terminated */
    size_t nfallback;
};

/* ------------------------------------------------------------ messages */

/* `kiln: KIND: ...` on stderr, in one write. */
__attribute__((format(printf, 2, 3))) static void say(const char *kind, const char *message,
                                                       ...) {
    char *text = NULL, *line = NULL;
    va_list args;
    va_start(args, message);
    int n = vasprintf(&text, message, args);
    va_end(args);
    if (n >= 0) n = asprintf(&line, "kiln: %s: %s\n", kind, text);
    if (n > 0) {
        ssize_t unused = write(2, line, (size_t)n);
        (void)unused;
    }
    free(text);
    free(line);
}

/* ------------------------------------------------------------ buffers */

struct buf {
    char *data;
    size_t len, cap;
    int failed; /* out of memory: the contents are incomplete */
};

static void put(struct buf *b, const void *data, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            b->failed = 1;
            return;
        }
        b->data = grown, b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void put_text(struct buf *b, const char *text) { put(b, text, strlen(text)); }

/* ------------------------------------------------------------ settings */

static void bad_conf(const struct conf *conf, const char *problem) {
    say("error", "%s/" CONF_NAME " %s (hint: write it again: " INSTALL_COMMAND " %s)",
        conf->folder, problem, conf->folder);
    exit(EXIT_SETUP);
}

static char *read_conf(struct conf *conf) {
    char *path = NULL;
    if (asprintf(&path, "%s/" CONF_NAME, conf->folder) < 0) return NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) return NULL;
    struct buf text = {0};
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 || text.len + (size_t)n > CONF_LIMIT) {
            if (n > 0) errno = EFBIG;
            text.failed = 1;
            break;
        }
        put(&text, chunk, (size_t)n);
    }
    int saved = errno;
    close(fd);
    errno = saved;
    if (text.failed || text.data == NULL) {
        free(text.data);
        if (!text.failed) errno = ENODATA;
        return NULL;
    }
    return text.data;
}

static int ends_with(const char *text, const char *end) {
    size_t n = strlen(text), k = strlen(end);
    return n >= k && strcmp(text + n - k, end) == 0;
}

static void load_conf(struct conf *conf) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        say("error", "cannot find this program's own file (/proc/self/exe): %s", strerror(errno));
        exit(EXIT_SETUP);
    }
    self[n] = '\0';
    conf->folder = folder_of(self);
    char *text = conf->folder ? read_conf(conf) : NULL;
    if (text == NULL) {
        char *problem = NULL;
        if (asprintf(&problem, "cannot be read: %s", strerror(errno)) < 0) problem = NULL;
        bad_conf(conf, problem ? problem : "cannot be read");
    }
    size_t lines = 1;
    for (char *p = text; *p; p++) lines += *p == '\n';
    char **fields = calloc(lines + 1, sizeof *fields);
    size_t count = 0;
    for (char *p = text; fields && *p;) {
        char *end = strchrnul(p, '\n');
        fields[count++] = p;
        if (*end == '\0') break;
        *end = '\0';
        p = end + 1;
    }
    struct sockaddr_un addr;
    if (fields == NULL || count < 3 || fields[0][0] != '/' || !ends_with(fields[0], ".sock") ||
        strlen(fields[0]) >= sizeof addr.sun_path || fields[1][0] != '/' || fields[2][0] != '/')
        bad_conf(conf, "is not the server's socket, the store and the fallback command, "
                       "one a line");
    conf->socket = fields[0];
    conf->home = fields[1];
    conf->fallback = fields + 2;
    conf->nfallback = count - 2;
}

/* ------------------------------------------------------------ the command */

/* Apply the leading -C DIR (or -CDIR) options as kiln.cli.entry does; the
   index of the first argument left. */
static int enter_directories(int argc, char **argv) {
    int at = 1;
    while (at < argc && strncmp(argv[at], "-C", 2) == 0) {
        const char *folder = argv[at] + 2;
        int next = at + 1;
        if (*folder == '\0') {
            if (at + 1 >= argc) break;
            folder = argv[at + 1];
            next = at + 2;
        }
        if (chdir(folder) != 0) break;
        at = next;
    }
    return at;
}

static int served(const char *command) {
    return strcmp(command, "build") == 0 || strcmp(command, "check") == 0 ||
           strcmp(command, "gocacheprog") == 0;
}

/* The user's home as Python's os.path.expanduser("~") finds it. */
static char *user_home(void) {
    const char *home = getenv("HOME");
    if (home == NULL) {
        struct passwd *entry = getpwuid(getuid());
        if (entry == NULL) return strdup("~");
        home = entry->pw_dir;
    }
    char *copy = strdup(home);
    if (copy == NULL) return NULL;
    size_t n = strlen(copy);
    while (n > 0 && copy[n - 1] == '/') copy[--n] = '\0';
    if (n == 0) {
        free(copy);
        return strdup("/");
    }
    return copy;
}

/* The real path of the store commands here use (kiln.store.db.default_home),
   or NULL if it cannot be resolved (no server can serve it then). */
static char *store_home(void) {
    const char *kiln_home = getenv("KILN_HOME");
    const char *cache = getenv("XDG_CACHE_HOME");
    char *path = NULL;
    if (kiln_home && *kiln_home) {
        path = strdup(kiln_home);
    } else if (cache && *cache) {
        if (asprintf(&path, "%s/kiln", cache) < 0) path = NULL;
    } else {
        char *home = user_home();
        const char *sep = home && ends_with(home, "/") ? "" : "/";
        if (home == NULL || asprintf(&path, "%s%s.cache/kiln", home, sep) < 0) path = NULL;
        free(home);
    }
    char *real = path ? realpath(path, NULL) : NULL;
    free(path);
    return real;
}

/* Run Kiln in Python: the fallback command, then the arguments left. */
__attribute__((noreturn)) static void fall_back(const struct conf *conf, char **args, int nargs,
                                                int tried) {
    char **argv = calloc(conf->nfallback + (size_t)nargs + 1, sizeof *argv);
    if (argv == NULL) {
        say("error", "out of memory");
        exit(EXIT_SETUP);
    }
    memcpy(argv, conf->fallback, conf->nfallback * sizeof *argv);
    memcpy(argv + conf->nfallback, args, (size_t)nargs * sizeof *argv);
    if (tried) setenv(TRIED, "1", 1);
    for (int fd = 0; fd < 3; fd++)
        if (closed_stdio[fd]) close(fd);
    execv(argv[0], argv);
    say("error", "cannot run %s: %s (hint: install the client again: " INSTALL_COMMAND " %s)",
        argv[0], strerror(errno), conf->folder);
    exit(EXIT_SETUP);
}

/* ------------------------------------------------------------ trust */

/* The pid a server recorded, read as Python's int() reads it; -1 if none. */
static long recorded_pid(const char *socket_path) {
    size_t stem = strlen(socket_path) - strlen(".sock");
    char *path = NULL;
    if (asprintf(&path, "%.*s.pid", (int)stem, socket_path) < 0) return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) return -1;
    char text[33];
    size_t have = 0;
    ssize_t n;
    while (have < 32 && (n = read(fd, text + have, 32 - have)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        have += (size_t)n;
    }
    close(fd);
    text[have] = '\0';
    if (strlen(text) != have) return -1; /* a NUL inside */
    const char *p = text;
    while (*p == ' ' || (*p >= '\t' && *p <= '\r')) p++;
    int negative = *p == '-';
    if (*p == '+' || *p == '-') p++;
    long value = 0;
    int digits = 0;
    for (; (*p >= '0' && *p <= '9') || (*p == '_' && digits && p[1] >= '0' && p[1] <= '9'); p++) {
        if (*p == '_') continue;
        if (value > (LONG_MAX - 9) / 10) return -1;
        value = value * 10 + (*p - '0');
        digits++;
    }
    while (*p == ' ' || (*p >= '\t' && *p <= '\r')) p++;
    if (!digits || *p) return -1;
    return negative ? -value : value;
}

/* A connection to the server, verified as client.connect verifies it
   (private_socket.h, then the pid the server recorded); -1 when there is
   none or it cannot be trusted (then *why says why). */
static int connect_server(const struct conf *conf, char **why) {
    struct ucred peer;
    int fd = connect_private(conf->socket, &peer, why);
    if (fd >= 0 && (long)peer.pid != recorded_pid(conf->socket)) {
        *why = format("%s is served by pid %ld, not by the pid %.*s.pid records", conf->socket,
                      (long)peer.pid, (int)(strlen(conf->socket) - strlen(".sock")),
                      conf->socket);
        close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------ the request */

/* The length of the valid UTF-8 character at s (n bytes left), 0 if none
   starts there (as Python's strict decoder judges: no overlong forms, no
   surrogates, nothing past U+10FFFF). */
static size_t utf8_char(const unsigned char *s, size_t n) {
    unsigned char lo = 0x80, hi = 0xbf;
    size_t need;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        need = 2;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        need = 3;
        if (s[0] == 0xe0) lo = 0xa0;
        if (s[0] == 0xed) hi = 0x9f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        need = 4;
        if (s[0] == 0xf0) lo = 0x90;
        if (s[0] == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return need;
}

static void put_string(struct buf *b, const char *text, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)text;
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t plain = i;
        while (plain < n && s[plain] >= 0x20 && s[plain] < 0x80 && s[plain] != '"' &&
               s[plain] != '\\')
            plain++;
        if (plain > i) {
            put(b, text + i, plain - i);
            i = plain;
            continue;
        }
        size_t k = utf8_char(s + i, n - i);
        if (k > 1) {
            put(b, text + i, k);
            i += k;
            continue;
        }
        char escape[6] = {'\\', (char)s[i]};
        size_t len = 2;
        if (k == 0 || s[i] < 0x20) { /* \udcXX: surrogateescape's byte; \u00XX: a control */
            const char *high = k == 0 ? "udc" : "u00";
            memcpy(escape + 1, high, 3);
            escape[4] = hex[s[i] >> 4], escape[5] = hex[s[i] & 15];
            len = 6;
        }
        put(b, escape, len);
        i++;
    }
    put(b, "\"", 1);
}

struct var {
    const char *entry;
    size_t key_len;
    size_t index;
};

static int by_key_then_index(const void *a, const void *b) {
    const struct var *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->entry, y->entry, n);
    if (c == 0 && x->key_len != y->key_len) c = x->key_len < y->key_len ? -1 : 1;
    if (c == 0) c = x->index < y->index ? -1 : x->index > y->index;
    return c;
}

/* The environment as Python's os.environ holds it: entries without '='
   left out and, of a name given twice, the first. */
static void put_environment(struct buf *b) {
    size_t count = 0;
    while (environ[count]) count++;
    struct var *vars = calloc(count + 1, sizeof *vars);
    char *skip = calloc(count + 1, 1);
    if (vars == NULL || skip == NULL) {
        b->failed = 1;
        free(vars);
        free(skip);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        const char *eq = strchr(environ[i], '=');
        if (eq == NULL)
            skip[i] = 1;
        else
            vars[n++] = (struct var){environ[i], (size_t)(eq - environ[i]), i};
    }
    qsort(vars, n, sizeof *vars, by_key_then_index);
    for (size_t i = 1; i < n; i++)
        if (vars[i].key_len == vars[i - 1].key_len &&
            memcmp(vars[i].entry, vars[i - 1].entry, vars[i].key_len) == 0)
            skip[vars[i].index] = 1;
    free(vars);
    put(b, "{", 1);
    const char *comma = "";
    for (size_t i = 0; i < count; i++) {
        if (skip[i]) continue;
        const char *eq = strchr(environ[i], '=');
        put_text(b, comma);
        put_string(b, environ[i], (size_t)(eq - environ[i]));
        put(b, ":", 1);
        put_string(b, eq + 1, strlen(eq + 1));
        comma = ",";
    }
    free(skip);
    put(b, "}", 1);
}

/* The run request; 0, or -1 if it cannot be made (or is too large). */
static int make_request(struct buf *b, const char *home, char **args, int nargs) {
    char *cwd = getcwd(NULL, 0);
    if (cwd == NULL) return -1; /* (a removed folder: the fallback says so) */
    mode_t mask = umask(0);
    umask(mask);
    put_text(b, "{\"op\":\"run\",\"home\":");
    put_string(b, home, strlen(home));
    put_text(b, ",\"argv\":[");
    for (int i = 0; i < nargs; i++) {
        if (i) put(b, ",", 1);
        put_string(b, args[i], strlen(args[i]));
    }
    put_text(b, "],\"cwd\":");
    put_string(b, cwd, strlen(cwd));
    free(cwd);
    put_text(b, ",\"env\":");
    put_environment(b);
    char tail[32];
    snprintf(tail, sizeof tail, ",\"umask\":%u}\n", (unsigned)mask);
    put_text(b, tail);
    return b->failed || b->len > LINE_LIMIT ? -1 : 0;
}

/* Send the request with descriptors `fds` (its first bytes carry them). */
static int send_request(int sock, const struct buf *request, const int fds[3]) {
    union {
        char data[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {request->data, request->len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.data,
                         .msg_controllen = sizeof control.data};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(3 * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, 3 * sizeof(int));
    ssize_t n;
    do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return -1;
    return write_all(sock, request->data + n, request->len - (size_t)n, 1);
}

/* ------------------------------------------------------------ answers */

struct json {
    const unsigned char *p, *end;
    int depth;
};

static void skip_space(struct json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int eat(struct json *j, char c) {
    skip_space(j);
    if (j->p < j->end && *j->p == (unsigned char)c) {
        j->p++;
        return 1;
    }
    return 0;
}

static int hex4(const unsigned char *p, unsigned *value) {
    *value = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') d = (c | 0x20) - 'a' + 10;
        else return -1;
        *value = *value << 4 | d;
    }
    return 0;
}

static void put_utf8(struct buf *b, unsigned cp) {
    unsigned char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (unsigned char)cp, n = 1;
    } else if (cp < 0x800) {
        s[0] = (unsigned char)(0xc0 | cp >> 6), n = 2;
    } else if (cp < 0x10000) {
        s[0] = (unsigned char)(0xe0 | cp >> 12), n = 3;
    } else {
        s[0] = (unsigned char)(0xf0 | cp >> 18), n = 4;
    }
    for (size_t i = 1; i < n; i++)
        s[i] = (unsigned char)(0x80 | ((cp >> (6 * (n - 1 - i))) & 0x3f));
    put(b, s, n);
}

/* A JSON string, decoded into `out` (NULL: skipped); -1 if malformed. */
static int parse_string(struct json *j, struct buf *out) {
    skip_space(j);
    if (j->p >= j->end || *j->p != '"') return -1;
    j->p++;
    for (;;) {
        if (j->p >= j->end) return -1;
        unsigned char c = *j->p++;
        if (c == '"') return 0;
        if (c < 0x20) return -1;
        if (c != '\\') {
            if (out) put(out, &c, 1);
            continue;
        }
        if (j->p >= j->end) return -1;
        char simple;
        switch (*j->p) {
        case '"': simple = '"'; break;
        case '\\': simple = '\\'; break;
        case '/': simple = '/'; break;
        case 'b': simple = '\b'; break;
        case 'f': simple = '\f'; break;
        case 'n': simple = '\n'; break;
        case 'r': simple = '\r'; break;
        case 't': simple = '\t'; break;
        case 'u': simple = 0; break;
        default: return -1;
        }
        if (simple) {
            if (out) put(out, &simple, 1);
            j->p++;
            continue;
        }
        unsigned cp, low;
        if (j->end - j->p < 5 || hex4(j->p + 1, &cp) != 0) return -1;
        j->p += 5;
        if (cp >= 0xd800 && cp <= 0xdbff && j->end - j->p >= 6 && j->p[0] == '\\' &&
            j->p[1] == 'u' && hex4(j->p + 2, &low) == 0 && low >= 0xdc00 && low <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            j->p += 6;
        }
        if (out == NULL) continue;
        if (cp >= 0xdc80 && cp <= 0xdcff) { /* surrogateescape: the byte itself */
            unsigned char byte = (unsigned char)(cp - 0xdc00);
            put(out, &byte, 1);
        } else {
            put_utf8(out, cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp);
        }
    }
}

static int parse_number(struct json *j, double *value) {
    skip_space(j);
    const char *start = (const char *)j->p;
    if (j->p >= j->end || !(*j->p == '-' || (*j->p >= '0' && *j->p <= '9'))) return -1;
    char *stop;
    *value = strtod(start, &stop); /* (the line ends with a NUL) */
    if (stop == start || (const unsigned char *)stop > j->end) return -1;
    j->p = (const unsigned char *)stop;
    return 0;
}

static int skip_value(struct json *j) {
    static const char *const words[] = {"true", "false", "null"};
    skip_space(j);
    if (j->p >= j->end) return -1;
    unsigned char c = *j->p;
    if (c == '"') return parse_string(j, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        if (++j->depth > 100) return -1;
        j->p++;
        if (!eat(j, close)) {
            do {
                if (c == '{' && (parse_string(j, NULL) != 0 || !eat(j, ':'))) return -1;
                if (skip_value(j) != 0) return -1;
            } while (eat(j, ','));
            if (!eat(j, close)) return -1;
        }
        j->depth--;
        return 0;
    }
    double number;
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(j, &number);
    for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(j->end - j->p) >= n && memcmp(j->p, words[i], n) == 0) {
            j->p += n;
            return 0;
        }
    }
    return -1;
}

struct piece {
    int fd;
    size_t at, len; /* in the message's text */
};

struct message {
    int refused, has_exit, has_warning;
    long exit;
    struct buf warning;
    struct buf text; /* the pieces of output, one after the other */
    struct piece *pieces;
    size_t npieces;
};

static void clear_message(struct message *m) {
    free(m->warning.data);
    free(m->text.data);
    free(m->pieces);
    memset(m, 0, sizeof *m);
}

/* "output": [[fd, "text"], ...] */
static int parse_output(struct json *j, struct message *m) {
    m->text.len = 0, m->npieces = 0;
    if (!eat(j, '[')) return -1;
    if (eat(j, ']')) return 0;
    size_t cap = m->npieces;
    do {
        double fd;
        if (!eat(j, '[') || parse_number(j, &fd) != 0 || !eat(j, ',')) return -1;
        size_t at = m->text.len;
        if (parse_string(j, &m->text) != 0 || !eat(j, ']')) return -1;
        if (m->npieces == cap) {
            cap = cap ? cap * 2 : 8;
            struct piece *grown = realloc(m->pieces, cap * sizeof *grown);
            if (grown == NULL) return -1;
            m->pieces = grown;
        }
        m->pieces[m->npieces++] = (struct piece){fd == 2 ? 2 : 1, at, m->text.len - at};
    } while (eat(j, ','));
    return eat(j, ']') && !m->text.failed ? 0 : -1;
}

/* One answer line (NUL-terminated); -1 if it is not a JSON object whose
   known members are of the kinds expected. */
static int parse_message(const char *line, size_t len, struct message *m) {
    struct json j = {(const unsigned char *)line, (const unsigned char *)line + len, 0};
    struct buf key = {0};
    int result = -1;
    if (!eat(&j, '{')) return -1;
    if (eat(&j, '}')) {
        result = 0;
    } else {
        do {
            key.len = 0;
            if (parse_string(&j, &key) != 0 || key.failed || !eat(&j, ':')) goto done;
            size_t n = key.len;
            const char *name = key.data ? key.data : "";
            double value;
            if (n == 7 && memcmp(name, "refused", 7) == 0) {
                m->refused = 1;
                if (skip_value(&j) != 0) goto done;
            } else if (n == 7 && memcmp(name, "warning", 7) == 0) {
                m->warning.len = 0;
                skip_space(&j);
                m->has_warning = j.p < j.end && *j.p == '"';
                if ((m->has_warning ? parse_string(&j, &m->warning) : skip_value(&j)) != 0)
                    goto done;
            } else if (n == 4 && memcmp(name, "exit", 4) == 0) {
                if (parse_number(&j, &value) != 0 || value < -2147483648.0 || value > 2147483647.0)
                    goto done;
                m->has_exit = 1;
                m->exit = (long)value;
            } else if (n == 6 && memcmp(name, "output", 6) == 0) {
                if (parse_output(&j, m) != 0) goto done;
            } else if (skip_value(&j) != 0) {
                goto done;
            }
        } while (eat(&j, ','));
        result = eat(&j, '}') ? 0 : -1;
    }
    skip_space(&j);
    if (j.p != j.end) result = -1;
done:
    free(key.data);
    return result;
}

struct reader {
    int sock, signals;
    int received; /* the last signal forwarded */
    char *data;
    size_t start, len, cap;
};

static void forward_signals(struct reader *r) {
    struct signalfd_siginfo info;
    while (read(r->signals, &info, sizeof info) == (ssize_t)sizeof info) {
        r->received = (int)info.ssi_signo;
        char line[32];
        int n = snprintf(line, sizeof line, "{\"signal\":%d}\n", r->received);
        write_all(r->sock, line, (size_t)n, 1); /* (a server that is gone needs none) */
    }
}

enum { GOT, GONE, MALFORMED };

/* The next answer, forwarding signals while it waits: GOT, GONE (the
   connection ended first, or the line is too long) or MALFORMED. */
static int next_message(struct reader *r, struct message *m) {
    clear_message(m);
    for (;;) {
        char *newline = memchr(r->data + r->start, '\n', r->len - r->start);
        if (newline != NULL) {
            char *line = r->data + r->start;
            *newline = '\0';
            r->start = (size_t)(newline - r->data) + 1;
            return parse_message(line, (size_t)(newline - line), m) == 0 ? GOT : MALFORMED;
        }
        if (r->len - r->start >= LINE_LIMIT) return GONE;
        if (r->start > 0) {
            memmove(r->data, r->data + r->start, r->len - r->start);
            r->len -= r->start, r->start = 0;
        }
        if (r->cap - r->len < 4096) {
            size_t cap = r->cap ? r->cap * 2 : 65536;
            char *grown = realloc(r->data, cap + 1);
            if (grown == NULL) return GONE;
            r->data = grown, r->cap = cap;
        }
        struct pollfd watch[2] = {{.fd = r->sock, .events = POLLIN},
                                  {.fd = r->signals, .events = POLLIN}};
        if (poll(watch, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return GONE;
        }
        if (watch[1].revents & POLLIN) forward_signals(r);
        if (watch[0].revents == 0) continue;
        ssize_t got = recv(r->sock, r->data + r->len, r->cap - r->len, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got <= 0) return GONE;
        r->len += (size_t)got;
    }
}

/* Print an answer's output; -1 if a write failed. */
static int write_output(const struct message *m) {
    int failed = 0;
    for (size_t i = 0; i < m->npieces; i++)
        failed |= write_all(m->pieces[i].fd, m->text.data + m->pieces[i].at, m->pieces[i].len, 0);
    return failed ? -1 : 0;
}

/* Exit with an answer's code (1 instead of 0 if output was lost). */
__attribute__((noreturn)) static void finish(const struct message *m, int failed) {
    exit(failed && m->exit == 0 ? 1 : (int)m->exit);
}

/* Hand the command to the server on `sock`; returns (the server refused,
   or went away before answering) only for the fallback to run. */
static void hand_over(int sock, const struct conf *conf, char **args, int nargs) {
    struct buf request = {0};
    if (make_request(&request, conf->home, args, nargs) != 0) {
        close(sock);
        free(request.data);
        return;
    }
    sigset_t forwarded, saved;
    sigemptyset(&forwarded);
    sigaddset(&forwarded, SIGINT);
    sigaddset(&forwarded, SIGTERM);
    sigaddset(&forwarded, SIGHUP);
    sigaddset(&forwarded, SIGQUIT);
    sigprocmask(SIG_BLOCK, &forwarded, &saved);
    struct reader r = {.sock = sock};
    r.signals = signalfd(-1, &forwarded, SFD_NONBLOCK | SFD_CLOEXEC);
    if (r.signals < 0) {
        sigprocmask(SIG_SETMASK, &saved, NULL);
        close(sock);
        free(request.data);
        return;
    }
    static const int stdio[3] = {0, 1, 2};
    int sent = send_request(sock, &request, stdio);
    free(request.data);

    struct message m = {0};
    int got = sent == 0 ? next_message(&r, &m) : GONE;
    if (got == GONE) m.refused = 1;
    if (got == MALFORMED) {
        say("error", "the kiln server's answer is not what Kiln sends");
        exit(1);
    }
    if (m.refused) {
        if (m.has_warning) say("warning", "%s", m.warning.data ? m.warning.data : "");
        forward_signals(&r);
        if (r.received) exit(128 + r.received); /* interrupted meanwhile: that is the answer */
        close(r.signals);
        close(sock);
        sigprocmask(SIG_SETMASK, &saved, NULL);
        clear_message(&m);
        return;
    }
    int failed = write_output(&m) != 0; /* (a no-op build the server answered itself) */
    if (m.has_exit) finish(&m, failed); /* (it can be done before "started" is sent) */
    for (;;) { /* the command's own "exit", or the server's once it is reaped */
        got = next_message(&r, &m);
        if (got != GOT) {
            say("error", "the kiln server stopped during the command");
            exit(1);
        }
        if (m.has_exit) finish(&m, failed);
    }
}

int main(int argc, char **argv) {
    for (int fd = 0; fd < 3; fd++) /* (in order: each open takes the lowest number free) */
        if ((closed_stdio[fd] = fcntl(fd, F_GETFD) < 0) && open("/dev/null", O_RDWR) != fd) {
            say("error", "cannot open /dev/null: %s", strerror(errno));
            exit(EXIT_SETUP);
        }
    struct conf conf;
    load_conf(&conf);
    int first = argc > 0 ? enter_directories(argc, argv) : 0;
    char **args = argv + first;
    int nargs = argc - first;
    const char *setting = getenv("KILN_SERVER"); /* "off": never use a server */
    if ((setting && strcasecmp(setting, "off") == 0) || nargs == 0 || !served(args[0]))
        fall_back(&conf, args, nargs, 0);
    char *home = store_home();
    if (home == NULL || strcmp(home, conf.home) != 0) fall_back(&conf, args, nargs, 0);
    free(home);
    char *why = NULL;
    int sock = connect_server(&conf, &why);
    if (why != NULL) say("warning", "not using the kiln server: %s", why);
    if (sock >= 0) hand_over(sock, &conf, args, nargs);
    /* Asked, or warned of: the fallback need not look again. (With no
       server at all it does: it may start one, [server] start = on-build.) */
    fall_back(&conf, args, nargs, sock >= 0 || why != NULL);
}
