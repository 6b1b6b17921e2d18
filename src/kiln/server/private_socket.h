/*
 * What Kiln's native clients share (kiln-cc, kiln/cc/client.c; kiln, the
 * server's client, kiln/server/client.c; each includes this once): whole
 * writes, and connecting to a socket of Kiln's in a private folder.
 *
 * A socket is trusted, as kiln/server/client.py trusts it, only if its
 * folder is a folder (not a link to one) of this user that no other user
 * may read, write or enter, it is a socket of this user, and the process
 * listening on it runs as this user.
 */
#ifndef KILN_PRIVATE_SOCKET_H
#define KILN_PRIVATE_SOCKET_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* All of `len` bytes to `fd`; -1 if it fails. A socket is written with
   MSG_NOSIGNAL (a peer gone is an error, not SIGPIPE). */
static int write_all(int fd, const void *data, size_t len, int is_socket) {
    const char *at = data;
    while (len) {
        ssize_t n = is_socket ? send(fd, at, len, MSG_NOSIGNAL) : write(fd, at, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        at += n, len -= (size_t)n;
    }
    return 0;
}

/* The folder of a path ("." for a bare name); NULL without memory. */
static char *folder_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (slash == NULL) return strdup(".");
    return slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
}

__attribute__((format(printf, 1, 2))) static char *format(const char *format, ...) {
    char *text = NULL;
    va_list args;
    va_start(args, format);
    if (vasprintf(&text, format, args) < 0) text = NULL;
    va_end(args);
    return text ? text : strdup("(out of memory)");
}

/* Why `path` is not a `kind` (S_IFDIR or S_IFSOCK) of this user, or NULL. */
static char *not_owned(const char *path, const struct stat *st, mode_t kind) {
    if ((st->st_mode & S_IFMT) != kind)
        return format("%s is not a %s", path, kind == S_IFDIR ? "folder" : "socket");
    if (st->st_uid != getuid())
        return format("%s belongs to uid %u, not to uid %u", path, (unsigned)st->st_uid,
                      (unsigned)getuid());
    return NULL;
}

/* A connection to the socket at `path` (its listener's credentials in
   *peer); -1 when nothing listens there, or when it is not to be trusted:
   then *why says why (in the words of kiln/server/client.py). */
static int connect_private(const char *path, struct ucred *peer, char **why) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct stat st;
    *why = NULL;
    if (strlen(path) >= sizeof addr.sun_path || strchr(path, '/') == NULL) return -1;
    char *folder = folder_of(path);
    if (folder == NULL || lstat(folder, &st) != 0) {
        free(folder);
        return -1;
    }
    *why = not_owned(folder, &st, S_IFDIR);
    if (*why == NULL && (st.st_mode & 077))
        *why = format("%s is open to other users (mode %04o, not 0700)", folder,
                      (unsigned)(st.st_mode & 07777));
    free(folder);
    if (*why != NULL || lstat(path, &st) != 0) return -1;
    if ((*why = not_owned(path, &st, S_IFSOCK)) != NULL) return -1;

    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int r;
    do r = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    while (r != 0 && errno == EINTR);
    socklen_t size = sizeof *peer;
    if (r != 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, peer, &size) != 0 ||
        size != sizeof *peer) {
        close(fd);
        return -1;
    }
    if (peer->uid != getuid()) {
        *why = format("%s is served by uid %u, not by uid %u", path, (unsigned)peer->uid,
                      (unsigned)getuid());
        close(fd);
        return -1;
    }
    return fd;
}

#endif
