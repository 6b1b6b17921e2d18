/*
 * kiln-zygote: runs the steps of one native executor inside one bubblewrap
 * sandbox, each step in namespaces of its own.
 *
 * bubblewrap builds the sandbox once (user, mount, pid, network, ipc, uts and
 * cgroup namespaces; /usr of the declared tools; /proc, /dev, hostname, uid).
 * This program is its first process. For every request on the socket given
 * as argv[1] it forks a child that
 *
 *   - enters a new user namespace (its uid and gid mapped to themselves), new
 *     mount, pid and ipc namespaces, so nothing a step leaves behind (a
 *     mount, a System V shared memory segment, a process) reaches the next;
 *   - binds the step's input folder read-only at /kiln/inputs and its work
 *     folder at /work (and /kiln/host/secrets, if this sandbox was given
 *     secrets, read-only at /kiln/secrets), mounts a fresh /tmp and
 *     /dev/shm, makes the shared /dev read-only, and covers
 *     /kiln/host (the folders of all steps and this program) and the /proc
 *     entries of the sandbox's resident processes with an empty read-only
 *     tmpfs;
 *   - forks the step's init (pid 1 of the new pid namespace), which forks
 *     the program in a new session with the requested environment and
 *     working folder, reaps every process, and reports how the program
 *     ended. When the init exits the kernel kills whatever is left.
 *
 * Paths given after the socket (declared tools that live under /tmp) are
 * bound again, read-only, on top of each step's fresh /tmp.
 *
 * Request (one SOCK_SEQPACKET message): items, each a kind byte, a length
 * (uint32, host byte order) and that many bytes without NUL: 's' the step's
 * name, 'c' its working folder, 'e' NAME=VALUE, 'a' an argument; with two
 * descriptors (stdout, stderr) as SCM_RIGHTS.
 * Reply: "exit N", "signal N" or "error TEXT".
 *
 * The zygote is not dumpable, so a step cannot read its memory or reach its
 * mount namespace through /proc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_REQUEST (4 << 20)
#define MAX_ITEMS 65536

extern char **environ;

/* Paths under /tmp to show again in each step's /tmp, opened by each step
 * in its own mount namespace (a bind's source must be in the same one). */
static char **kept_paths;
static int *kept_fds;
static int kept;

struct request {
    char *step;
    char *cwd;
    char *argv[MAX_ITEMS];
    char *envp[MAX_ITEMS];
    int out, err;
};

/* How a step ended, written by its init (or by the set-up on failure). */
struct outcome {
    int kind; /* 0: exit code, 1: signal, 2: set-up error */
    int value;
    char text[240];
};

static void report(int fd, int kind, int value, const char *format, ...) {
    struct outcome o = {kind, value, ""};
    if (format) {
        va_list args;
        va_start(args, format);
        vsnprintf(o.text, sizeof o.text, format, args);
        va_end(args);
    }
    (void)!write(fd, &o, sizeof o);
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Bind `from` at `to`; read-only keeps the flags the kernel locked. */
static int bind_path(const char *from, const char *to, int read_only) {
    if (mount(from, to, NULL, MS_BIND | MS_REC, NULL) < 0)
        return -1;
    if (!read_only)
        return 0;
    struct statvfs st;
    if (statvfs(to, &st) < 0)
        return -1;
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
    if (st.f_flag & ST_NOSUID)
        flags |= MS_NOSUID;
    if (st.f_flag & ST_NODEV)
        flags |= MS_NODEV;
    if (st.f_flag & ST_NOEXEC)
        flags |= MS_NOEXEC;
    return mount(NULL, to, NULL, flags, NULL);
}

static int make_parents(char *path) {
    for (char *p = path + 1; (p = strchr(p, '/')); p++) {
        *p = 0;
        int r = mkdir(path, 0755);
        *p = '/';
        if (r < 0 && errno != EEXIST)
            return -1;
    }
    return 0;
}

/* Bind the kept paths again on top of a fresh /tmp. */
static int show_kept_paths(void) {
    char from[64];
    for (int i = 0; i < kept; i++) {
        struct stat st;
        if (fstat(kept_fds[i], &st) < 0 || make_parents(kept_paths[i]) < 0)
            return -1;
        if (S_ISDIR(st.st_mode)) {
            if (mkdir(kept_paths[i], 0755) < 0 && errno != EEXIST)
                return -1;
        } else {
            int fd = open(kept_paths[i], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0)
                return -1;
            close(fd);
        }
        snprintf(from, sizeof from, "/proc/self/fd/%d", kept_fds[i]);
        if (bind_path(from, kept_paths[i], 1) < 0)
            return -1;
    }
    return 0;
}

/* Cover the /proc entries of the processes running now (bubblewrap's, this
 * zygote's, this set-up's) with the empty read-only tmpfs at /kiln/host
 * (binds of it: cheaper than a tmpfs each): their command lines name host
 * folders. The step's own processes come later. */
static int hide_resident_processes(void) {
    DIR *proc = opendir("/proc");
    if (!proc)
        return -1;
    char path[64];
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(proc))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s", e->d_name);
        rc = mount("/kiln/host", path, NULL, MS_BIND, NULL);
    }
    closedir(proc);
    return rc;
}

/* The step's program: the last process of the chain. Never returns. */
static void run_program(struct request *r) {
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(r->out, 1) < 0 || dup2(r->err, 2) < 0)
        _exit(126);
    setsid();
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (chdir(r->cwd) < 0) {
        dprintf(2, "kiln: cannot enter the working folder %s: %s\n", r->cwd, strerror(errno));
        _exit(126);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    environ = r->envp;
    execvp(r->argv[0], r->argv);
    int code = errno == ENOENT ? 127 : 126;
    dprintf(2, "kiln: cannot run %s: %s\n", r->argv[0], strerror(errno));
    _exit(code);
}

/* pid 1 of the step's pid namespace: start the program, reap everything,
 * report the program's end. Exiting kills the rest of the namespace. */
static void run_init(struct request *r, int status_fd) {
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) {
        report(status_fd, 2, errno, "mount /tmp: %s", strerror(errno));
        _exit(1);
    }
    /* /dev is shared by every step of the sandbox: read-only, with a
     * /dev/shm of the step's own, so nothing passes through it. */
    if (bind_path("/dev", "/dev", 1) < 0 ||
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) {
        report(status_fd, 2, errno, "mount /dev: %s", strerror(errno));
        _exit(1);
    }
    if (show_kept_paths() < 0) {
        report(status_fd, 2, errno, "bind tools under /tmp: %s", strerror(errno));
        _exit(1);
    }
    pid_t program = fork();
    if (program < 0) {
        report(status_fd, 2, errno, "fork: %s", strerror(errno));
        _exit(1);
    }
    if (program == 0)
        run_program(r);
    close(r->out);
    close(r->err);
    for (;;) {
        int status;
        pid_t done = waitpid(-1, &status, 0);
        if (done < 0 && errno == EINTR)
            continue;
        if (done < 0) {
            report(status_fd, 2, errno, "wait: %s", strerror(errno));
            _exit(1);
        }
        if (done != program)
            continue;
        if (WIFSIGNALED(status))
            report(status_fd, 1, WTERMSIG(status), NULL);
        else
            report(status_fd, 0, WEXITSTATUS(status), NULL);
        _exit(0);
    }
}

/* The forked child of the zygote: new namespaces and mounts, then init. */
static void run_step(struct request *r, int status_fd) {
    char path[4096];
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC) < 0) {
        report(status_fd, 2, errno, "unshare: %s", strerror(errno));
        _exit(1);
    }
    /* The id map files of a process that is not dumpable belong to root;
     * this process writes its own, then is closed again before any of the
     * step's code runs. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    char uid_map[64], gid_map[64];
    snprintf(uid_map, sizeof uid_map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    snprintf(gid_map, sizeof gid_map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
    if (write_file("/proc/self/setgroups", "deny") < 0 ||
        write_file("/proc/self/uid_map", uid_map) < 0 ||
        write_file("/proc/self/gid_map", gid_map) < 0) {
        report(status_fd, 2, errno, "id maps: %s", strerror(errno));
        _exit(1);
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    const char *what = "tools under /tmp";
    for (int i = 0; i < kept; i++)
        if ((kept_fds[i] = open(kept_paths[i], O_PATH | O_CLOEXEC)) < 0)
            goto failed;
    what = "inputs";
    snprintf(path, sizeof path, "/kiln/host/inputs/%s", r->step);
    if (bind_path(path, "/kiln/inputs", 1) < 0)
        goto failed;
    what = "work";
    snprintf(path, sizeof path, "/kiln/host/work/%s", r->step);
    if (bind_path(path, "/work", 0) < 0)
        goto failed;
    what = "secrets";
    if (access("/kiln/host/secrets", F_OK) == 0 && bind_path("/kiln/host/secrets", "/kiln/secrets", 1) < 0)
        goto failed;
    what = "host";
    if (mount("tmpfs", "/kiln/host", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0555") < 0)
        goto failed;
    what = "/proc";
    if (hide_resident_processes() < 0)
        goto failed;
    pid_t init = fork();
    if (init < 0) {
        report(status_fd, 2, errno, "fork: %s", strerror(errno));
        _exit(1);
    }
    if (init == 0)
        run_init(r, status_fd);
    close(r->out);
    close(r->err);
    int status;
    while (waitpid(init, &status, 0) < 0 && errno == EINTR)
        ;
    _exit(0);
failed:
    report(status_fd, 2, errno, "mount %s: %s", what, strerror(errno));
    _exit(1);
}

/* Read the request's items (see the top of the file) into `strings`, each
 * NUL-terminated there; an item holding a NUL byte is refused, so no
 * argument can smuggle in another argument or a variable. */
static int parse(const char *buf, size_t size, char *strings, struct request *r) {
    const char *p = buf, *end = buf + size;
    char *out = strings;
    int argc = 0, envc = 0;
    r->step = r->cwd = NULL;
    while (p < end) {
        uint32_t length;
        if (end - p < 5)
            return -1;
        char kind = *p;
        memcpy(&length, p + 1, sizeof length);
        p += 5;
        if (length > (size_t)(end - p) || memchr(p, 0, length))
            return -1;
        memcpy(out, p, length);
        out[length] = 0;
        if (kind == 's' && !r->step)
            r->step = out;
        else if (kind == 'c' && !r->cwd)
            r->cwd = out;
        else if (kind == 'a' && argc < MAX_ITEMS - 1)
            r->argv[argc++] = out;
        else if (kind == 'e' && envc < MAX_ITEMS - 1)
            r->envp[envc++] = out;
        else
            return -1;
        out += length + 1;
        p += length;
    }
    r->argv[argc] = NULL;
    r->envp[envc] = NULL;
    if (!r->step || !r->cwd || !r->step[0] || r->step[0] == '.' || strchr(r->step, '/'))
        return -1;
    return argc > 0 ? 0 : -1;
}

static void reply(int sock, const char *format, ...) {
    char text[300];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(text, sizeof text, format, args);
    va_end(args);
    if (n > (int)sizeof text - 1)
        n = sizeof text - 1;
    if (send(sock, text, n, MSG_NOSIGNAL) < 0)
        _exit(1);
}

static struct request request;

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    int sock = atoi(argv[1]);
    kept = argc - 2;
    kept_paths = argv + 2;
    kept_fds = calloc(kept + 1, sizeof(int));
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    fcntl(sock, F_SETFD, FD_CLOEXEC);
    char *buf = malloc(MAX_REQUEST);
    /* each item's bytes plus its NUL: never longer than the request */
    char *strings = malloc(MAX_REQUEST);
    if (!buf || !strings)
        return 1;
    for (;;) {
        char control[CMSG_SPACE(2 * sizeof(int))];
        struct iovec iov = {buf, MAX_REQUEST};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0; /* Kiln closed the socket: the executor is done */
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(2 * sizeof(int))) {
            reply(sock, "error request without its two descriptors");
            continue;
        }
        memcpy(&request.out, CMSG_DATA(c), sizeof(int));
        memcpy(&request.err, CMSG_DATA(c) + sizeof(int), sizeof(int));
        if ((msg.msg_flags & MSG_TRUNC) || parse(buf, n, strings, &request) < 0) {
            reply(sock, "error malformed request");
            close(request.out);
            close(request.err);
            continue;
        }
        int status_pipe[2];
        if (pipe2(status_pipe, O_CLOEXEC) < 0) {
            reply(sock, "error pipe: %s", strerror(errno));
            close(request.out);
            close(request.err);
            continue;
        }
        pid_t child = fork();
        if (child == 0) {
            close(status_pipe[0]);
            run_step(&request, status_pipe[1]);
        }
        close(status_pipe[1]);
        close(request.out);
        close(request.err);
        if (child < 0) {
            reply(sock, "error fork: %s", strerror(errno));
            close(status_pipe[0]);
            continue;
        }
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
        /* no step's request stays in memory the next one forks */
        memset(buf, 0, n);
        memset(strings, 0, n);
        struct outcome o;
        ssize_t got = read(status_pipe[0], &o, sizeof o);
        close(status_pipe[0]);
        if (got != (ssize_t)sizeof o)
            reply(sock, "error the step's init ended without a report");
        else if (o.kind == 0)
            reply(sock, "exit %d", o.value);
        else if (o.kind == 1)
            reply(sock, "signal %d", o.value);
        else
            reply(sock, "error %s", o.text);
    }
}
