/* kiln.h: memoized calls for WebAssembly guests written in C.
 *
 * A guest run by Kiln (a wasm step, or a function called by one) can call
 * an exported function of another WebAssembly module on some input bytes
 * and get output bytes back. Kiln remembers every answer in its action
 * cache, keyed by the module's content, the function's name, the input and
 * the caller's limits: the same call made again, in this build or a later
 * one, is answered from the cache without running.
 *
 * The called function runs in a fresh instance of its module, with an empty
 * file system (only /tmp), argv holding only the function's name and no
 * environment. It takes no parameters and returns nothing, and talks to
 * its caller only through
 * kiln_input() and kiln_output() below. Link such a module as a reactor:
 * c.program(..., exports=["NAME"]) in a build file.
 *
 * Build files pass this header to the C rules with
 *     c.program(..., headers=[..., c.guest_header()])
 * and units include it as <kiln.h>.
 *
 * The functions declared first are the raw imports of the "kiln" module;
 * the static inline helpers after them are what most guests need. The raw
 * imports return a WASI errno (0 on success; the same numbers as <errno.h>
 * in wasi-libc) and write their results through the pointers given.
 */
#ifndef KILN_H
#define KILN_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_IMPORT(name) __attribute__((import_module("kiln"), import_name(name)))

/* The status of a call that trapped, or ran out of fuel, memory or disk. */
#define KILN_STATUS_TRAP 134

/* What kiln_call_read copies: the called function's output (what it gave
 * to kiln_output), or what it printed on stdout or stderr. */
#define KILN_CALL_OUTPUT 0
#define KILN_CALL_STDOUT 1
#define KILN_CALL_STDERR 2

/* ------------------------------------------------------------ raw imports */

/* Start calling the function `export_name` of `module` on `input`, without
 * waiting for it; `*handle` names the call in the functions below. The
 * module is a path in the caller's file system (an input of the step, or a
 * file the guest wrote itself), or "digest:HASH/SIZE" for a module in the
 * store. Calls started one after the other without waiting in between may
 * run at the same time.
 * Errors: ENOENT, no such module file; EINVAL, a malformed module or
 * function name; EMFILE, too many calls open at once (1024). */
KILN_IMPORT("call_start")
int32_t kiln_call_start(const char *module, size_t module_len, const char *export_name,
                        size_t export_len, const void *input, size_t input_len,
                        uint32_t *handle);

/* Wait for a call to finish. `*status` is 0 when the function returned,
 * its exit code when it called exit(), KILN_STATUS_TRAP when it trapped or
 * ran out of a limit; `*output_size` is the size of its output (always 0
 * unless the status is 0). The caller is charged the fuel the call used,
 * whether it ran now or came from the cache; a caller with less fuel left
 * runs out of fuel right here. Waiting again gives the same answer.
 * Errors: EBADF, not an open handle. */
KILN_IMPORT("call_wait")
int32_t kiln_call_wait(uint32_t handle, uint32_t *status, uint32_t *output_size);

/* Copy up to `len` bytes of a finished call's output, stdout or stderr
 * (`which`: KILN_CALL_OUTPUT, KILN_CALL_STDOUT, KILN_CALL_STDERR) to `buf`;
 * `*copied` says how many were copied.
 * Errors: EBADF, not an open handle; EINVAL, the call was not waited for
 * yet, or `which` is none of the three. */
KILN_IMPORT("call_read")
int32_t kiln_call_read(uint32_t handle, uint32_t which, void *buf, size_t len,
                       uint32_t *copied);

/* Forget a handle. A call started and never waited for is cancelled when
 * the caller ends. Errors: EBADF, not an open handle. */
KILN_IMPORT("call_release")
int32_t kiln_call_release(uint32_t handle);

/* Inside a called function: the size of its input.
 * Errors: ENOTSUP, the guest is not running as a call. */
KILN_IMPORT("input_size")
int32_t kiln_input_size(uint32_t *size);

/* Inside a called function: copy up to `len` bytes of its input, starting
 * at byte `offset`, to `buf`; `*copied` says how many (0 past the end).
 * Errors: ENOTSUP, the guest is not running as a call. */
KILN_IMPORT("input_read")
int32_t kiln_input_read(void *buf, uint32_t offset, size_t len, uint32_t *copied);

/* Inside a called function: append `len` bytes to its output. The output
 * may hold at most 64 MiB; writing more traps the call. The output counts
 * only if the function returns normally (status 0).
 * Errors: ENOTSUP, the guest is not running as a call. */
KILN_IMPORT("output_write")
int32_t kiln_output_write(const void *buf, size_t len);

/* Call and wait in one go (what kiln_call uses: one trip to the host).
 * Writes up to `output_cap` bytes of the output to `output`, then at `info`
 * three numbers: the status, the output's size, and a handle that is 0
 * unless more is left to read (the output did not fit, or the function
 * printed on stdout or stderr): read it with kiln_call_read and release
 * it. Errors as kiln_call_start. */
KILN_IMPORT("call")
int32_t kiln_call_into(const char *module, size_t module_len, const char *export_name,
                       size_t export_len, const void *input, size_t input_len, void *output,
                       size_t output_cap, uint32_t info[3]);

/* Ask the running build for a step, described by `request_len` bytes of
 * JSON at `request` (see docs/wasm.md, "Steps requested by a step"); the
 * build runs it (or finds it in the cache) while the guest goes on.
 * Errors: EINVAL, a malformed request; ENOENT, an input that is not there;
 * ENOTSUP, inside a called function. */
KILN_IMPORT("step_start")
int32_t kiln_step_start(const char *request, size_t request_len, uint32_t *handle);

/* Wait for a requested step: `*exit_code` is its exit code, and its
 * outputs now appear, read-only, under the request's "mount" folder
 * (default /tmp/kiln-steps/HANDLE). A request the build refuses ends the
 * requesting step with an error. Errors: EBADF, not an open handle;
 * EEXIST, the mount folder exists already; ENOTDIR, a folder above it is
 * not a folder the guest may write. */
KILN_IMPORT("step_wait")
int32_t kiln_step_wait(uint32_t handle, uint32_t *exit_code);

/* Copy up to `len` bytes of a requested step's stdout (`which` 1) or
 * stderr (2) to `buf`. Errors: EBADF; EINVAL, not waited for yet. */
KILN_IMPORT("step_read")
int32_t kiln_step_read(uint32_t handle, uint32_t which, void *buf, size_t len,
                       uint32_t *copied);

/* Forget a requested step's handle. Errors: EBADF. */
KILN_IMPORT("step_release")
int32_t kiln_step_release(uint32_t handle);

/* ---------------------------------------------------------------- helpers */

/* Start a call (as kiln_call_start) with the module and function named by
 * C strings. Returns 0, or the errno kiln_call_start gave. Finish it with
 * kiln_call_end. Starting several calls before ending any lets them run
 * in parallel. */
static inline int kiln_call_begin(const char *module, const char *export_name,
                                  const void *input, size_t input_len, uint32_t *handle) {
    return (int)kiln_call_start(module, strlen(module), export_name, strlen(export_name),
                                input, input_len, handle);
}

/* Wait for a call started by kiln_call_begin, take its output and release
 * the handle (in every case). Returns the call's status (0: the function
 * returned; an exit code; KILN_STATUS_TRAP), or a negative errno when the
 * output could not be had: -EBADF for a handle that is not open, -ENOMEM
 * when there is no memory for the output. On a status of 0 or more,
 * `*output` is a malloc'd copy of the output, followed by a NUL byte that
 * `*output_len` does not count (so text can be used as a C string), to be
 * freed by the caller; on a negative return it is NULL. `output` may be
 * NULL to throw the output away; `output_len` may be NULL. */
static inline int kiln_call_end(uint32_t handle, void **output, size_t *output_len) {
    uint32_t status = 0, size = 0, copied = 0;
    char *buf = NULL;
    int32_t err;
    if (output) *output = NULL;
    if (output_len) *output_len = 0;
    err = kiln_call_wait(handle, &status, &size);
    if (err) {
        kiln_call_release(handle);
        return -(int)err;
    }
    if (output) {
        buf = (char *)malloc((size_t)size + 1);
        if (!buf) {
            kiln_call_release(handle);
            return -ENOMEM;
        }
        err = kiln_call_read(handle, KILN_CALL_OUTPUT, buf, size, &copied);
        if (err) {
            free(buf);
            kiln_call_release(handle);
            return -(int)err;
        }
        buf[copied] = '\0';
        *output = buf;
    }
    if (output_len) *output_len = output ? copied : size;
    kiln_call_release(handle);
    return (int)status;
}

/* Call the function `export_name` of `module` on `input` and wait for it:
 * in one trip to the host (kiln_call_into). Returns the call's status (0 when
 * the function returned), or a negative errno when the call could not be
 * made (-ENOENT: no such module file; -EINVAL: a malformed name; -EMFILE:
 * too many calls open) or its output not be had (-ENOMEM). The output is
 * given as by kiln_call_end: malloc'd, NUL-terminated, NULL on an error. */
static inline int kiln_call(const char *module, const char *export_name, const void *input,
                            size_t input_len, void **output, size_t *output_len) {
    uint32_t info[3] = {0, 0, 0};
    size_t cap = 4096;
    char *buf = (char *)malloc(cap + 1);
    int32_t err;
    if (output) *output = NULL;
    if (output_len) *output_len = 0;
    if (!buf) return -ENOMEM;
    err = kiln_call_into(module, strlen(module), export_name, strlen(export_name), input,
                         input_len, buf, cap, info);
    if (err) {
        free(buf);
        return -(int)err;
    }
    if (info[2] != 0) { /* more to read than fitted: take the whole output */
        uint32_t copied = 0;
        char *bigger = info[1] > cap ? (char *)realloc(buf, (size_t)info[1] + 1) : buf;
        if (!bigger) {
            free(buf);
            kiln_call_release(info[2]);
            return -ENOMEM;
        }
        buf = bigger;
        err = kiln_call_read(info[2], KILN_CALL_OUTPUT, buf, info[1], &copied);
        kiln_call_release(info[2]);
        if (err) {
            free(buf);
            return -(int)err;
        }
    }
    buf[info[1]] = '\0';
    if (output) *output = buf;
    else free(buf);
    if (output_len) *output_len = info[1];
    return (int)info[0];
}

/* Ask the build for the step the JSON `request` describes and wait for it.
 * Returns its handle (for kiln_step_read and kiln_step_release) with its
 * exit code in `*exit_code`, or a negative errno. */
static inline int64_t kiln_step(const char *request, uint32_t *exit_code) {
    uint32_t handle = 0;
    int32_t err = kiln_step_start(request, strlen(request), &handle);
    if (!err) err = kiln_step_wait(handle, exit_code);
    if (err) {
        if (handle) kiln_step_release(handle);
        return -(int64_t)err;
    }
    return handle;
}

/* Inside a called function: a malloc'd copy of its whole input, followed
 * by a NUL byte that `*len` does not count; the caller frees it. NULL
 * outside a call (errno ENOTSUP) or without memory (errno ENOMEM). `len`
 * may be NULL. */
static inline void *kiln_input(size_t *len) {
    uint32_t size = 0, done = 0, copied = 0;
    char *buf;
    int32_t err;
    if (len) *len = 0;
    err = kiln_input_size(&size);
    if (err) {
        errno = err;
        return NULL;
    }
    buf = (char *)malloc((size_t)size + 1);
    if (!buf) {
        errno = ENOMEM;
        return NULL;
    }
    while (done < size) {
        err = kiln_input_read(buf + done, done, size - done, &copied);
        if (err || copied == 0) {
            free(buf);
            errno = err ? err : EIO;
            return NULL;
        }
        done += copied;
    }
    buf[size] = '\0';
    if (len) *len = size;
    return buf;
}

/* Inside a called function: append `len` bytes of `buf` to its output.
 * Returns 0, or ENOTSUP outside a call. */
static inline int kiln_output(const void *buf, size_t len) {
    return (int)kiln_output_write(buf, len);
}

/* Inside a called function: append the C string `text` to its output
 * (without its NUL). Returns 0, or ENOTSUP outside a call. */
static inline int kiln_output_str(const char *text) {
    return (int)kiln_output_write(text, strlen(text));
}

#undef KILN_IMPORT

#ifdef __cplusplus
}
#endif

#endif /* KILN_H */
