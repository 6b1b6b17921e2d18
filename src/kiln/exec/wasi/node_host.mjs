// The second engine: one WASI preview 1 command run by Node's own
// WebAssembly engine (V8) in the same virtual world as kiln's Python host
// (kiln/exec/wasi/host.py and vfs.py). Both sides implement the contract
// named by ABI_VERSION; a difference in what a guest can observe between
// them is a bug in one of them, and `kiln check --engine node` finds it.
//
//   node node_host.mjs REQUEST.json RESULT_DIR [ASK_FD ANSWER_FD]
//
// REQUEST.json (written by kiln.exec.node):
//   abi, calls (the kiln import module's version), argv, env [[name, value]],
//   seed (hex), limits {fuel, memory-mib, disk-mib} (decimal strings: they
//   are in a call's key), outputs [path], root (digest or null),
//   dirs {digest: [[name, "file"|"symlink"|"dir", payload]]},
//   blobs {digest: path of the blob's file}
// ASK_FD, ANSWER_FD: a channel to kiln for blobs not in `blobs` (a module a
// guest calls by digest): write "DIGEST\n" to ASK_FD, read one line from
// ANSWER_FD: "file PATH" or "absent".
// RESULT_DIR receives result.json {exit_code, stdout, stderr, outputs} and
// data.bin; byte ranges in result.json are [offset, length] into data.bin.
// Exit status: 0 when the guest ran (whatever its own exit code), 3 when the
// request cannot be run (the reason on stderr), 4 when this V8 cannot
// compile a module (for a called module, RESULT_DIR/unsupported.json names it).

import { createHash } from "node:crypto";
import { readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";

const ABI_VERSION = "kiln-wasi-p1-v2";
const CALLS_VERSION = "kiln-calls-v1"; // kiln.exec.wasm_calls.CALLS_VERSION
const MAX_OPEN_CALLS = 1024;
const REALTIME_EPOCH_NS = 946684800n * 1000000000n;
const MONOTONIC_STEP_NS = 1000n;
const OUTPUT_CAP = 64 * 1024 * 1024;
const MAX_SYMLINK_HOPS = 40;
const EXIT_TRAP = 134;

const E = {
  SUCCESS: 0, BADF: 8, EXIST: 20, FAULT: 21, INVAL: 28, ISDIR: 31, LOOP: 32, MFILE: 33, NOENT: 44,
  NOSYS: 52, NOTDIR: 54, NOTEMPTY: 55, NOTSUP: 58, ROFS: 69, SPIPE: 70,
};
const FT = { CHARDEV: 2, DIR: 3, FILE: 4, SYMLINK: 7 };
const OFLAGS = { CREAT: 1, DIRECTORY: 2, EXCL: 4, TRUNC: 8 };
const FDFLAGS_APPEND = 1;
const LOOKUP_FOLLOW = 1;
const RIGHTS_ALL = (1n << 30n) - 1n;
const EVENTTYPE_CLOCK = 0;

class WasiError extends Error {
  constructor(errno) {
    super(`WASI errno ${errno}`);
    this.errno = errno;
  }
}

class ProcExit extends Error {
  constructor(code) {
    super(`exit ${code}`);
    this.code = code;
  }
}

/** A call wrote more than OUTPUT_CAP bytes of output: the call traps. */
class OutputTooLarge extends Error {}

// Names order by code point (as Python sorts str), which is UTF-8 byte order.
const byName = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));

// ------------------------------------------------------------------ bytes

/** A growable byte buffer: a file's content. */
class Bytes {
  constructor(initial) {
    this.buf = Buffer.from(initial ?? []);
    this.length = this.buf.length;
  }
  view() {
    return this.buf.subarray(0, this.length);
  }
  resize(n) {
    if (n > this.buf.length) {
      const grown = Buffer.alloc(Math.max(n, this.buf.length * 2));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    } else if (n > this.length) {
      this.buf.fill(0, this.length, n);
    }
    this.length = n;
  }
  put(offset, chunk) {
    if (offset + chunk.length > this.length) this.resize(Math.max(offset + chunk.length, this.length));
    if (offset > this.length) this.resize(offset);
    chunk.copy ? chunk.copy(this.buf, offset) : this.buf.set(chunk, offset);
  }
}

class Stream {
  constructor() {
    this.data = new Bytes();
  }
  write(chunk) {
    const room = OUTPUT_CAP - this.data.length;
    if (chunk.length > room) chunk = chunk.subarray(0, Math.max(room, 0));
    this.data.put(this.data.length, chunk);
  }
}

// ------------------------------------------------------------ file system

class FileSystem {
  constructor(request) {
    this.nextIno = 1;
    this.dirs = request.dirs;
    this.blobs = request.blobs;
    this.root = this.dir(false, null, request.root);
    if (request.root === null) this.root.entries = new Map();
  }
  newIno() {
    return this.nextIno++;
  }
  dir(writable, parent, source = null) {
    return { kind: "dir", ino: this.newIno(), writable, parent, source, entries: null, outputNames: new Set() };
  }
  file(writable, data = null, blob = null) {
    return { kind: "file", ino: this.newIno(), writable, data, blob };
  }
  symlink(writable, target) {
    return { kind: "symlink", ino: this.newIno(), writable, target };
  }
  entries(d) {
    if (d.entries === null) {
      d.entries = new Map();
      for (const [name, kind, payload] of this.dirs[d.source]) {
        let node;
        if (kind === "dir") node = this.dir(false, d, payload);
        else if (kind === "file") node = this.file(false, null, payload);
        else node = this.symlink(false, payload);
        d.entries.set(name, node);
      }
    }
    return d.entries;
  }
  content(f) {
    if (f.data === null) f.data = new Bytes(readFileSync(this.blobs[f.blob]));
    return f.data;
  }
  size(f) {
    return f.data !== null ? f.data.length : Number(f.blob.split("/")[1]);
  }
  dirAt(parts) {
    let d = this.root;
    for (const name of parts) {
      const entries = this.entries(d);
      let node = entries.get(name);
      if (!node || node.kind !== "dir") {
        node = this.dir(false, d);
        node.entries = new Map();
        entries.set(name, node);
      }
      d = node;
    }
    return d;
  }
  allowDir(path) {
    const parts = path.split("/").filter((p) => p);
    const parent = this.dirAt(parts.slice(0, -1));
    const d = this.dir(true, parent);
    d.entries = new Map();
    this.entries(parent).set(parts[parts.length - 1], d);
    return d;
  }
  allowFile(path) {
    const parts = path.split("/").filter((p) => p);
    const parent = this.dirAt(parts.slice(0, -1));
    const name = parts[parts.length - 1];
    parent.outputNames.add(name);
    this.entries(parent).delete(name);
  }
  static mayChange(d, name) {
    return d.writable || d.outputNames.has(name);
  }
  /** [parent dir, last name, node or undefined]; mirrors vfs.FileSystem.resolve. */
  resolve(start, path, follow) {
    if (!path) throw new WasiError(E.NOENT);
    if (path.includes("\0")) throw new WasiError(E.INVAL);
    let hops = 0;
    let d = path.startsWith("/") ? this.root : start;
    let parts = path.split("/").filter((p) => p && p !== ".");
    if (parts.length === 0) return [d, ".", d];
    for (;;) {
      const name = parts.shift();
      if (name === "..") {
        d = d.parent ?? d;
        if (parts.length === 0) return [d, ".", d];
        continue;
      }
      const node = this.entries(d).get(name);
      if (node && node.kind === "symlink" && (parts.length || follow)) {
        hops += 1;
        if (hops > MAX_SYMLINK_HOPS) throw new WasiError(E.LOOP);
        if (node.target.startsWith("/")) d = this.root;
        parts = node.target.split("/").filter((p) => p && p !== ".").concat(parts);
        if (parts.length === 0) return [d, ".", d];
        continue;
      }
      if (parts.length === 0) return [d, name, node];
      if (!node) throw new WasiError(E.NOENT);
      if (node.kind !== "dir") throw new WasiError(E.NOTDIR);
      d = node;
    }
  }
}

const filetype = (node) => (node.kind === "dir" ? FT.DIR : node.kind === "symlink" ? FT.SYMLINK : FT.FILE);

// -------------------------------------------------------------- the host

// (ignoreBOM: a leading U+FEFF is part of the string, as Python decodes it)
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

class Host {
  constructor(fs, argv, env, seed) {
    this.fs = fs;
    this.argv = argv.map((a) => Buffer.from(a + "\0"));
    this.env = env.map(([k, v]) => Buffer.from(`${k}=${v}\0`));
    this.seed = createHash("sha256").update(Buffer.concat([Buffer.from("kiln-random\0"), seed])).digest();
    this.randomCounter = 0n;
    this.randomPool = Buffer.alloc(0);
    this.monotonic = 0n;
    this.stdout = new Stream();
    this.stderr = new Stream();
    this.fds = new Map([[0, null], [1, null], [2, null], [3, { node: fs.root, dirPath: "/", offset: 0, append: false }]]);
    this.memory = null;
    this.kiln = null; // the `kiln` imports (KilnImports)
  }

  // ---------------------------------------------------------------- glue

  mem() {
    if (this.memory === null) throw new WasiError(E.FAULT); // none exported (yet)
    return new Uint8Array(this.memory.buffer);
  }
  read(ptr, len) {
    if (len === 0) return Buffer.alloc(0);
    const m = this.mem();
    if (ptr < 0 || len < 0 || ptr + len > m.length) throw new WasiError(E.FAULT);
    return Buffer.from(m.slice(ptr, ptr + len));
  }
  write(ptr, data) {
    if (!data.length) return;
    const m = this.mem();
    if (ptr < 0 || ptr + data.length > m.length) throw new WasiError(E.FAULT);
    m.set(data, ptr);
  }
  u32(ptr, value) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value >>> 0);
    this.write(ptr, b);
  }
  u64(ptr, value) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(value));
    this.write(ptr, b);
  }
  str(ptr, len) {
    try {
      return utf8.decode(this.read(ptr, len));
    } catch (e) {
      if (e instanceof WasiError) throw e;
      throw new WasiError(E.INVAL);
    }
  }
  fd(fd) {
    const of = this.fds.get(fd);
    if (!of) throw new WasiError(E.BADF);
    return of;
  }
  dirFd(fd) {
    const node = this.fd(fd).node;
    if (node.kind !== "dir") throw new WasiError(E.NOTDIR);
    return node;
  }
  file(fd) {
    const of = this.fd(fd);
    if (of.node.kind === "dir") throw new WasiError(E.ISDIR);
    return [of, of.node];
  }
  writableFile(fd) {
    const [, f] = this.file(fd);
    if (!f.writable) throw new WasiError(E.BADF);
    return f;
  }
  iovecs(iovs, count) {
    const raw = this.read(iovs, 8 * count);
    const out = [];
    for (let i = 0; i < count; i++) out.push([raw.readUInt32LE(8 * i), raw.readUInt32LE(8 * i + 4)]);
    return out;
  }
  gather(iovs, count) {
    return Buffer.concat(this.iovecs(iovs, count).map(([p, n]) => this.read(p, n)));
  }
  resolvePath(fd, ptr, len, follow) {
    return this.fs.resolve(this.dirFd(fd), this.str(ptr, len), follow);
  }

  // -------------------------------------------------- args, env, time

  listGet(items, ptrs, buf) {
    for (const item of items) {
      this.u32(ptrs, buf);
      this.write(buf, item);
      ptrs += 4;
      buf += item.length;
    }
  }
  args_get(argv, buf) {
    this.listGet(this.argv, argv, buf);
  }
  args_sizes_get(countPtr, sizePtr) {
    this.u32(countPtr, this.argv.length);
    this.u32(sizePtr, this.argv.reduce((n, a) => n + a.length, 0));
  }
  environ_get(env, buf) {
    this.listGet(this.env, env, buf);
  }
  environ_sizes_get(countPtr, sizePtr) {
    this.u32(countPtr, this.env.length);
    this.u32(sizePtr, this.env.reduce((n, a) => n + a.length, 0));
  }
  clock_res_get(clock, resPtr) {
    if (clock < 0 || clock > 3) throw new WasiError(E.INVAL);
    this.u64(resPtr, MONOTONIC_STEP_NS);
  }
  clock_time_get(clock, _precision, timePtr) {
    if (clock === 0) {
      this.u64(timePtr, REALTIME_EPOCH_NS);
    } else if (clock >= 1 && clock <= 3) {
      this.monotonic += MONOTONIC_STEP_NS;
      this.u64(timePtr, this.monotonic);
    } else {
      throw new WasiError(E.INVAL);
    }
  }
  random_get(buf, len) {
    while (this.randomPool.length < len) {
      const counter = Buffer.alloc(8);
      counter.writeBigUInt64LE(this.randomCounter++);
      const block = createHash("sha256").update(Buffer.concat([this.seed, counter])).digest();
      this.randomPool = Buffer.concat([this.randomPool, block]);
    }
    this.write(buf, this.randomPool.subarray(0, len));
    this.randomPool = this.randomPool.subarray(len);
  }
  poll_oneoff(inPtr, outPtr, count, neventsPtr) {
    if (count === 0) throw new WasiError(E.INVAL);
    const data = this.read(inPtr, count * 48);
    const events = [];
    let longest = 0n;
    for (let i = 0; i < count; i++) {
      const at = i * 48;
      const userdata = data.readBigUInt64LE(at);
      const tag = data.readUInt8(at + 8);
      const timeout = data.readBigUInt64LE(at + 24);
      if (tag === EVENTTYPE_CLOCK && timeout > longest) longest = timeout;
      const event = Buffer.alloc(32);
      event.writeBigUInt64LE(userdata, 0);
      event.writeUInt16LE(E.SUCCESS, 8);
      event.writeUInt8(tag, 10);
      events.push(event);
    }
    this.monotonic += longest; // a virtual sleep takes no real time
    this.write(outPtr, Buffer.concat(events));
    this.u32(neventsPtr, events.length);
  }
  proc_exit(code) {
    throw new ProcExit(code);
  }
  proc_raise() {
    return E.NOSYS;
  }
  sched_yield() {}
  sock_accept() {
    return E.NOTSUP;
  }
  sock_recv() {
    return E.NOTSUP;
  }
  sock_send() {
    return E.NOTSUP;
  }
  sock_shutdown() {
    return E.NOTSUP;
  }

  // ---------------------------------------------------------- descriptors

  fd_prestat_get(fd, ptr) {
    const of = this.fd(fd);
    if (!of.dirPath) throw new WasiError(E.BADF);
    const b = Buffer.alloc(8);
    b.writeUInt32LE(Buffer.byteLength(of.dirPath), 4);
    this.write(ptr, b);
  }
  fd_prestat_dir_name(fd, ptr, len) {
    const of = this.fd(fd);
    if (!of.dirPath) throw new WasiError(E.BADF);
    this.write(ptr, Buffer.from(of.dirPath).subarray(0, len));
  }
  fdstat(type, flags) {
    const b = Buffer.alloc(24);
    b.writeUInt8(type, 0);
    b.writeUInt16LE(flags, 2);
    b.writeBigUInt64LE(RIGHTS_ALL, 8);
    b.writeBigUInt64LE(RIGHTS_ALL, 16);
    return b;
  }
  fd_fdstat_get(fd, ptr) {
    if (fd >= 0 && fd <= 2) return this.write(ptr, this.fdstat(FT.CHARDEV, 0));
    const of = this.fd(fd);
    this.write(ptr, this.fdstat(filetype(of.node), of.append ? FDFLAGS_APPEND : 0));
  }
  fd_fdstat_set_flags(fd, flags) {
    if (fd < 0 || fd > 2) this.fd(fd).append = Boolean(flags & FDFLAGS_APPEND);
  }
  fd_fdstat_set_rights(fd) {
    if (fd < 0 || fd > 2) this.fd(fd);
  }
  fd_close(fd) {
    if (fd >= 0 && fd <= 2) return; // the standard streams stay usable (and captured)
    this.fd(fd);
    this.fds.delete(fd);
  }
  fd_renumber(fd, to) {
    if (fd <= 2 || to <= 2) throw new WasiError(E.NOTSUP);
    const of = this.fd(fd);
    this.fd(to);
    this.fds.set(to, of);
    this.fds.delete(fd);
  }
  fd_datasync(fd) {
    if (fd > 2) this.fd(fd);
  }
  fd_sync(fd) {
    this.fd_datasync(fd);
  }
  fd_advise(fd) {
    this.fd(fd);
  }
  fd_allocate(fd, offset, len) {
    const data = this.fs.content(this.writableFile(fd));
    const end = Number(offset) + Number(len);
    if (end > data.length) data.resize(end);
  }
  filestat(ino, type, size) {
    const b = Buffer.alloc(64);
    b.writeBigUInt64LE(BigInt(ino), 8);
    b.writeUInt8(type, 16);
    b.writeBigUInt64LE(1n, 24);
    b.writeBigUInt64LE(BigInt(size), 32);
    for (const at of [40, 48, 56]) b.writeBigUInt64LE(REALTIME_EPOCH_NS, at);
    return b;
  }
  stat(node) {
    let size = 0;
    if (node.kind === "file") size = this.fs.size(node);
    else if (node.kind === "symlink") size = Buffer.byteLength(node.target);
    return this.filestat(node.ino, filetype(node), size);
  }
  fd_filestat_get(fd, ptr) {
    if (fd >= 0 && fd <= 2) return this.write(ptr, this.filestat(0, FT.CHARDEV, 0));
    this.write(ptr, this.stat(this.fd(fd).node));
  }
  fd_filestat_set_size(fd, size) {
    this.fs.content(this.writableFile(fd)).resize(Number(size));
  }
  fd_filestat_set_times(fd) {
    this.fd(fd); // timestamps are fixed: accepted and ignored
  }
  fd_read(fd, iovs, count, nreadPtr) {
    if (fd === 0) return this.u32(nreadPtr, 0);
    const [of, f] = this.file(fd);
    const n = this.pread(f, iovs, count, of.offset);
    of.offset += n;
    this.u32(nreadPtr, n);
  }
  fd_pread(fd, iovs, count, offset, nreadPtr) {
    const [, f] = this.file(fd);
    this.u32(nreadPtr, this.pread(f, iovs, count, Number(offset)));
  }
  pread(f, iovs, count, offset) {
    const data = this.fs.content(f).view();
    let total = 0;
    for (const [ptr, len] of this.iovecs(iovs, count)) {
      const start = Math.min(offset + total, data.length);
      const chunk = data.subarray(start, Math.min(start + len, data.length));
      this.write(ptr, chunk);
      total += chunk.length;
      if (chunk.length < len) break;
    }
    return total;
  }
  fd_write(fd, iovs, count, nwrittenPtr) {
    const chunks = this.gather(iovs, count);
    if (fd === 1 || fd === 2) {
      (fd === 1 ? this.stdout : this.stderr).write(chunks);
    } else {
      const of = this.fd(fd);
      const data = this.fs.content(this.writableFile(fd));
      if (of.append) of.offset = data.length;
      data.put(of.offset, chunks);
      of.offset += chunks.length;
    }
    this.u32(nwrittenPtr, chunks.length);
  }
  fd_pwrite(fd, iovs, count, offset, nwrittenPtr) {
    const chunks = this.gather(iovs, count);
    this.fs.content(this.writableFile(fd)).put(Number(offset), chunks);
    this.u32(nwrittenPtr, chunks.length);
  }
  fd_seek(fd, offset, whence, newPtr) {
    if (fd >= 0 && fd <= 2) throw new WasiError(E.SPIPE);
    const [of, f] = this.file(fd);
    const base = [0, of.offset, this.fs.size(f)][whence];
    const target = base === undefined ? -1 : base + Number(offset);
    if (target < 0) throw new WasiError(E.INVAL);
    of.offset = target;
    this.u64(newPtr, of.offset);
  }
  fd_tell(fd, ptr) {
    if (fd >= 0 && fd <= 2) throw new WasiError(E.SPIPE);
    this.u64(ptr, this.fd(fd).offset);
  }
  fd_readdir(fd, buf, len, cookie, usedPtr) {
    const d = this.fd(fd).node;
    if (d.kind !== "dir") throw new WasiError(E.NOTDIR);
    const entries = this.fs.entries(d);
    const names = [".", "..", ...[...entries.keys()].sort(byName)];
    const parts = [];
    let size = 0;
    for (let i = Number(cookie); i < names.length; i++) {
      const name = names[i];
      const node = name === "." ? d : name === ".." ? d.parent ?? d : entries.get(name);
      const encoded = Buffer.from(name);
      const head = Buffer.alloc(24);
      head.writeBigUInt64LE(BigInt(i + 1), 0);
      head.writeBigUInt64LE(BigInt(node.ino), 8);
      head.writeUInt32LE(encoded.length, 16);
      head.writeUInt8(filetype(node), 20);
      parts.push(head, encoded);
      size += head.length + encoded.length;
      if (size >= len) break;
    }
    const out = Buffer.concat(parts);
    this.write(buf, out.subarray(0, len));
    this.u32(usedPtr, Math.min(out.length, len));
  }

  // ---------------------------------------------------------------- paths

  path_open(fd, dirflags, ptr, len, oflags, _rights, _inheriting, fdflags, fdPtr) {
    const [parent, name, found] = this.resolvePath(fd, ptr, len, Boolean(dirflags & LOOKUP_FOLLOW));
    let node = found;
    if (node && node.kind === "symlink") throw new WasiError(E.LOOP);
    if (!node) {
      if (!(oflags & OFLAGS.CREAT)) throw new WasiError(E.NOENT);
      if (oflags & OFLAGS.DIRECTORY) throw new WasiError(E.NOENT);
      if (!FileSystem.mayChange(parent, name)) throw new WasiError(E.ROFS);
      node = this.fs.file(true, new Bytes());
      this.fs.entries(parent).set(name, node);
    } else if (oflags & OFLAGS.EXCL && oflags & OFLAGS.CREAT) {
      throw new WasiError(E.EXIST);
    }
    if (oflags & OFLAGS.DIRECTORY && node.kind !== "dir") throw new WasiError(E.NOTDIR);
    if (oflags & OFLAGS.TRUNC) {
      if (node.kind !== "file") throw new WasiError(E.ISDIR);
      if (!node.writable) throw new WasiError(E.ROFS);
      node.data = new Bytes();
    }
    const newFd = Math.max(...this.fds.keys()) + 1;
    this.fds.set(newFd, { node, dirPath: "", offset: 0, append: Boolean(fdflags & FDFLAGS_APPEND) });
    this.u32(fdPtr, newFd);
  }
  path_filestat_get(fd, flags, ptr, len, buf) {
    const [, , node] = this.resolvePath(fd, ptr, len, Boolean(flags & LOOKUP_FOLLOW));
    if (!node) throw new WasiError(E.NOENT);
    this.write(buf, this.stat(node));
  }
  path_filestat_set_times(fd, flags, ptr, len) {
    const [, , node] = this.resolvePath(fd, ptr, len, Boolean(flags & LOOKUP_FOLLOW));
    if (!node) throw new WasiError(E.NOENT);
  }
  path_create_directory(fd, ptr, len) {
    const [parent, name, node] = this.resolvePath(fd, ptr, len, false);
    if (node) throw new WasiError(E.EXIST);
    if (!FileSystem.mayChange(parent, name)) throw new WasiError(E.ROFS);
    const d = this.fs.dir(true, parent);
    d.entries = new Map();
    this.fs.entries(parent).set(name, d);
  }
  path_readlink(fd, ptr, len, buf, bufLen, usedPtr) {
    const [, , node] = this.resolvePath(fd, ptr, len, false);
    if (!node || node.kind !== "symlink") throw new WasiError(node ? E.INVAL : E.NOENT);
    const target = Buffer.from(node.target).subarray(0, bufLen);
    this.write(buf, target);
    this.u32(usedPtr, target.length);
  }
  remove(fd, ptr, len, wantDir) {
    const [parent, name, node] = this.resolvePath(fd, ptr, len, false);
    if (!node) throw new WasiError(E.NOENT);
    if (wantDir !== (node.kind === "dir")) throw new WasiError(wantDir ? E.NOTDIR : E.ISDIR);
    if (wantDir && this.fs.entries(node).size) throw new WasiError(E.NOTEMPTY);
    if (!FileSystem.mayChange(parent, name)) throw new WasiError(E.ROFS);
    this.fs.entries(parent).delete(name);
  }
  path_remove_directory(fd, ptr, len) {
    this.remove(fd, ptr, len, true);
  }
  path_unlink_file(fd, ptr, len) {
    this.remove(fd, ptr, len, false);
  }
  path_rename(fd, old, oldLen, newFd, neu, newLen) {
    const [srcParent, srcName, node] = this.resolvePath(fd, old, oldLen, false);
    const [dstParent, dstName, existing] = this.resolvePath(newFd, neu, newLen, false);
    if (!node) throw new WasiError(E.NOENT);
    if (!(FileSystem.mayChange(srcParent, srcName) && FileSystem.mayChange(dstParent, dstName)))
      throw new WasiError(E.ROFS);
    if (existing && existing.kind === "dir" && this.fs.entries(existing).size) throw new WasiError(E.NOTEMPTY);
    this.fs.entries(srcParent).delete(srcName);
    // Python's dict keeps a replaced key where it was; Map.set does the same.
    this.fs.entries(dstParent).set(dstName, node);
    if (node.kind === "dir") node.parent = dstParent;
  }
  path_symlink(old, oldLen, fd, neu, newLen) {
    const target = this.str(old, oldLen);
    const [parent, name, existing] = this.resolvePath(fd, neu, newLen, false);
    if (existing) throw new WasiError(E.EXIST);
    if (!FileSystem.mayChange(parent, name)) throw new WasiError(E.ROFS);
    this.fs.entries(parent).set(name, this.fs.symlink(true, target));
  }
  path_link() {
    return E.NOTSUP;
  }
}

// ------------------------------------------------------- memoized calls

// The `kiln` import module (kiln/exec/wasi/kiln_imports.py). Calls run here,
// synchronously when first waited for, each in a fresh instance: nothing is
// memoized and no fuel is metered (V8 has none), which changes no outcome of
// a run that stayed within its limits under Wasmtime.

const DIGEST_PREFIX = "digest:";
const WASM_HEADER = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
// A module importing one function of type [] -> []: linking an export to it
// fails unless the export takes no parameters and returns nothing.
const NO_PARAMS_NO_RESULTS = new WebAssembly.Module(
  Buffer.from([...WASM_HEADER, 1, 4, 1, 0x60, 0, 0, 2, 7, 1, 1, 0x6d, 1, 0x66, 0, 0]),
);
// Python's str.isspace() (Digest.parse strips it) and str.isprintable() (up to
// the Unicode versions: a character assigned since Python's is printable here).
const PY_SPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";
const PY_UNPRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;

const sha256 = (data) => createHash("sha256").update(data).digest();
const digestOf = (data) => `${sha256(data).toString("hex")}/${data.length}`;

function pyStrip(text) {
  let start = 0;
  let end = text.length;
  while (start < end && PY_SPACE.includes(text[start])) start++;
  while (end > start && PY_SPACE.includes(text[end - 1])) end--;
  return text.slice(start, end);
}

/** A `digest:` module name's digest, normalized as kiln.model.digest.Digest
 * prints it; EINVAL when Digest.parse refuses it. */
function parseDigest(text) {
  const stripped = pyStrip(text);
  const slash = stripped.indexOf("/");
  if (slash < 0) throw new WasiError(E.INVAL);
  const hash = stripped.slice(0, slash).replace(/[A-F]/g, (c) => c.toLowerCase());
  const size = stripped.slice(slash + 1);
  if (!/^[0-9a-f]{64}$/.test(hash) || !/^[0-9]+$/.test(size)) throw new WasiError(E.INVAL);
  // Python's int() refuses more than 4300 digits with a ValueError, which
  // kiln_imports turns into EFAULT (as it does every ValueError).
  if (size.length > 4300) throw new WasiError(E.FAULT);
  return `${hash}/${BigInt(size)}`;
}

/** Python's repr() of a str: how wasm.py names an export in its notes. */
function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const c = ch.codePointAt(0);
    const hex = (n) => c.toString(16).padStart(n, "0");
    if (ch === quote || ch === "\\") out += "\\" + ch;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (c < 0x20 || c === 0x7f) out += "\\x" + hex(2);
    else if (c < 0x7f || !PY_UNPRINTABLE.test(ch)) out += ch;
    else out += c < 0x100 ? "\\x" + hex(2) : c < 0x10000 ? "\\u" + hex(4) : "\\U" + hex(8);
  }
  return out + quote;
}

/** What every call of one run shares: the limits in a call's key, where
 * modules come from, and the modules compiled so far. */
class Calls {
  constructor(request, channel, resultDir) {
    if (request.calls !== CALLS_VERSION) {
      fail(`request wants calls version ${request.calls}; this host runs ${CALLS_VERSION}`);
    }
    this.limits = request.limits;
    this.blobs = request.blobs;
    this.channel = channel; // [ASK_FD, ANSWER_FD] or null
    this.resultDir = resultDir;
    this.compiled = new Map(); // module digest -> WebAssembly.Module, or a note why not
  }

  /** kiln.exec.wasm_calls.call_key, as raw hash bytes (the callee's seed). */
  key(module, exportName, inputDigest) {
    const parts = [
      "kiln-call", ABI_VERSION, CALLS_VERSION, module, exportName, inputDigest,
      `fuel=${this.limits.fuel}`, `memory-mib=${this.limits["memory-mib"]}`,
      `disk-mib=${this.limits["disk-mib"]}`,
    ];
    return sha256(Buffer.from(parts.join("\0")));
  }

  /** Run `exportName` of a module ({digest, bytes: null unless the guest
   * wrote it}) on `input`: {status, output, stdout, stderr}. */
  run(module, exportName, input) {
    const fs = new FileSystem({ root: null, dirs: {}, blobs: {} });
    fs.allowDir("tmp");
    const host = new Host(fs, [exportName], [], this.key(module.digest, exportName, digestOf(input)));
    host.kiln = new KilnImports(host, this, input);
    const compiled = this.compile(module);
    const [status, note] =
      typeof compiled === "string" ? [EXIT_TRAP, compiled] : runModule(compiled, host, exportName);
    if (note) host.stderr.write(Buffer.from(`kiln: ${note}\n`));
    return {
      status: status >>> 0,
      output: status === 0 ? Buffer.from(host.kiln.output.view()) : Buffer.alloc(0),
      stdout: Buffer.from(host.stdout.data.view()),
      stderr: Buffer.from(host.stderr.data.view()),
    };
  }

  /** The compiled module, or the note of a trapped call when it is no
   * WebAssembly module at all. A module V8 cannot compile (a proposal this
   * Node.js lacks) is refused: nothing to compare. */
  compile(module) {
    let compiled = this.compiled.get(module.digest);
    if (compiled === undefined) {
      const bytes = module.bytes ?? this.blob(module.digest);
      if (bytes.length < 8 || !bytes.subarray(0, 8).equals(WASM_HEADER)) {
        compiled = `module ${module.digest} is not valid WebAssembly: no WebAssembly 1.0 module header`;
      } else {
        try {
          compiled = new WebAssembly.Module(bytes);
        } catch (e) {
          writeFileSync(join(this.resultDir, "unsupported.json"), JSON.stringify({ module: module.digest }));
          process.stderr.write(
            `kiln node engine: Node.js ${process.version} cannot compile the called module ${module.digest}: ${e.message}\n`,
          );
          process.exit(EXIT_UNSUPPORTED);
        }
      }
      this.compiled.set(module.digest, compiled);
    }
    return compiled;
  }

  /** A blob's bytes: an input's, or one kiln hands over by digest. Absent:
   * the run fails (an error, never a result), as under Wasmtime. */
  blob(digest) {
    let path = this.blobs[digest];
    if (path === undefined) {
      const answer = this.ask(digest);
      if (answer === "absent") fail(`module blob ${digest} is not in the store`);
      if (!answer.startsWith("file ")) fail(`kiln answered ${JSON.stringify(answer)} for blob ${digest}`);
      path = answer.slice("file ".length);
    }
    const data = readFileSync(path);
    if (digestOf(data) !== digest) fail(`blob ${digest} read from ${path} does not match its digest`);
    return data;
  }

  ask(digest) {
    if (this.channel === null) fail(`no channel to ask kiln for blob ${digest}`);
    const [askFd, answerFd] = this.channel;
    writeSync(askFd, `${digest}\n`);
    const chunks = [];
    const buf = Buffer.alloc(4096);
    for (;;) {
      const n = readSync(answerFd, buf, 0, buf.length, null);
      if (n === 0) fail(`kiln closed the blob channel (asking for ${digest})`);
      chunks.push(Buffer.from(buf.subarray(0, n)));
      if (buf.subarray(0, n).includes(0x0a)) break;
    }
    return Buffer.concat(chunks).toString("utf8").replace(/\n$/, "");
  }
}

/** The `kiln` functions of one guest run: a step's (input null), or a
 * call's (its input; `output` collects what it gives back). */
class KilnImports {
  constructor(host, calls, input) {
    this.host = host;
    this.calls = calls;
    this.input = input;
    this.output = new Bytes();
    this.open = new Map(); // handle -> {module, exportName, input, outcome}
    this.nextHandle = 1;
    this.modules = new Map(); // module name -> an input file's {digest, bytes: null}
  }

  call_start(modulePtr, moduleLen, exportPtr, exportLen, inputPtr, inputLen, handlePtr) {
    const handle = this.start(modulePtr, moduleLen, exportPtr, exportLen, inputPtr, inputLen);
    try {
      this.host.u32(handlePtr, handle);
    } catch (e) {
      this.call_release(handle); // (the handle's number stays used)
      throw e;
    }
  }

  /** call_start and call_wait in one: up to `outputCap` bytes of the output
   * at `outputPtr`, then status, output size and a handle (0 unless there
   * is more to read) at `infoPtr`. */
  call(modulePtr, moduleLen, exportPtr, exportLen, inputPtr, inputLen, outputPtr, outputCap, infoPtr) {
    let handle = this.start(modulePtr, moduleLen, exportPtr, exportLen, inputPtr, inputLen);
    const outcome = this.wait(this.open.get(handle));
    this.host.write(outputPtr, outcome.output.subarray(0, outputCap));
    if (outcome.output.length <= outputCap && !outcome.stdout.length && !outcome.stderr.length) {
      this.call_release(handle);
      handle = 0; // nothing more to read
    }
    const info = Buffer.alloc(12);
    info.writeUInt32LE(outcome.status, 0);
    info.writeUInt32LE(outcome.output.length, 4);
    info.writeUInt32LE(handle, 8);
    this.host.write(infoPtr, info);
  }

  start(modulePtr, moduleLen, exportPtr, exportLen, inputPtr, inputLen) {
    if (this.open.size >= MAX_OPEN_CALLS) throw new WasiError(E.MFILE);
    const module = this.module(this.host.str(modulePtr, moduleLen));
    const exportName = this.host.str(exportPtr, exportLen);
    if (!exportName || exportName.includes("\0")) throw new WasiError(E.INVAL);
    const input = this.host.read(inputPtr, inputLen);
    const handle = this.nextHandle;
    this.nextHandle += 1;
    this.open.set(handle, { module, exportName, input, outcome: null });
    return handle;
  }

  /** The module a guest names: by digest, or by a file it can see (a file
   * it wrote is taken as it is now; a name that led to an input file means
   * that module from then on, as in kiln_imports.py). */
  module(name) {
    if (name.startsWith(DIGEST_PREFIX)) return { digest: parseDigest(name.slice(DIGEST_PREFIX.length)), bytes: null };
    const known = this.modules.get(name);
    if (known !== undefined) return known;
    const fs = this.host.fs;
    const [, , node] = fs.resolve(fs.root, name, true);
    if (!node || node.kind !== "file") throw new WasiError(node ? E.INVAL : E.NOENT);
    if (node.blob === null) {
      const bytes = Buffer.from(fs.content(node).view());
      return { digest: digestOf(bytes), bytes };
    }
    const module = { digest: node.blob, bytes: null };
    if (!node.writable) this.modules.set(name, module);
    return module;
  }

  call_wait(handle, statusPtr, sizePtr) {
    const outcome = this.wait(this.entry(handle));
    this.host.u32(statusPtr, outcome.status);
    this.host.u32(sizePtr, outcome.output.length);
  }

  wait(entry) {
    if (entry.outcome === null) entry.outcome = this.calls.run(entry.module, entry.exportName, entry.input);
    return entry.outcome;
  }

  call_read(handle, which, buf, len, copiedPtr) {
    const outcome = this.entry(handle).outcome;
    if (outcome === null) throw new WasiError(E.INVAL); // not waited for yet
    const streams = [outcome.output, outcome.stdout, outcome.stderr];
    if (which >= streams.length) throw new WasiError(E.INVAL);
    const data = streams[which].subarray(0, len);
    this.host.write(buf, data);
    this.host.u32(copiedPtr, data.length);
  }

  call_release(handle) {
    this.entry(handle);
    this.open.delete(handle);
  }

  entry(handle) {
    const entry = this.open.get(handle);
    if (entry === undefined) throw new WasiError(E.BADF);
    return entry;
  }

  input_size(sizePtr) {
    this.host.u32(sizePtr, this.calledInput().length);
  }

  input_read(buf, offset, len, copiedPtr) {
    const data = this.calledInput().subarray(offset, offset + len);
    this.host.write(buf, data);
    this.host.u32(copiedPtr, data.length);
  }

  calledInput() {
    if (this.input === null) throw new WasiError(E.NOTSUP);
    return this.input;
  }

  output_write(buf, len) {
    if (this.input === null) throw new WasiError(E.NOTSUP);
    if (this.output.length + len > OUTPUT_CAP) throw new OutputTooLarge();
    this.output.put(this.output.length, this.host.read(buf, len));
  }
}

// The imports kiln's Python host defines (host.SIGNATURES); a module's
// other imports trap when called, as under Wasmtime.
const WASI_IMPORTS = [
  "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "clock_res_get",
  "clock_time_get", "fd_advise", "fd_allocate", "fd_close", "fd_datasync", "fd_fdstat_get",
  "fd_fdstat_set_flags", "fd_fdstat_set_rights", "fd_filestat_get", "fd_filestat_set_size",
  "fd_filestat_set_times", "fd_pread", "fd_prestat_get", "fd_prestat_dir_name", "fd_pwrite",
  "fd_read", "fd_readdir", "fd_renumber", "fd_seek", "fd_sync", "fd_tell", "fd_write",
  "path_create_directory", "path_filestat_get", "path_filestat_set_times", "path_link",
  "path_open", "path_readlink", "path_remove_directory", "path_rename", "path_symlink",
  "path_unlink_file", "poll_oneoff", "proc_exit", "proc_raise", "sched_yield", "random_get",
  "sock_accept", "sock_recv", "sock_send", "sock_shutdown",
];

const KILN_IMPORTS = [
  "call", "call_start", "call_wait", "call_read", "call_release", "input_size", "input_read", "output_write",
];
const IMPORT_MODULES = new Set(["wasi_snapshot_preview1", "kiln"]);

function imports(module, host) {
  const wasi = {};
  for (const name of WASI_IMPORTS) {
    wasi[name] = (...args) => {
      try {
        const result = host[name](...args);
        return result === undefined ? E.SUCCESS : result;
      } catch (e) {
        if (e instanceof WasiError) return e.errno;
        if (e instanceof RangeError) return E.FAULT;
        throw e;
      }
    };
  }
  const kiln = {};
  // A step that asks its build for steps (kiln.exec.wasi.step_requests)
  // cannot be run again here: refused, not compared.
  for (const name of ["step_start", "step_wait", "step_read", "step_release"]) {
    kiln[name] = () => {
      process.stderr.write("kiln node engine: the step asks its build for steps " +
        `(kiln ${name}), which only a build running it can answer\n`);
      process.exit(EXIT_NEEDS_BUILD);
    };
  }
  for (const name of KILN_IMPORTS) {
    kiln[name] = (...args) => {
      try {
        host.kiln[name](...args.map((a) => a >>> 0)); // (WASI's types are unsigned)
        return E.SUCCESS;
      } catch (e) {
        if (e instanceof WasiError) return e.errno;
        throw e; // a trap (or the end of the run), as under Wasmtime
      }
    };
  }
  const table = { wasi_snapshot_preview1: wasi, kiln };
  // As under Wasmtime (wasm.py's linker_for): a module importing only from
  // these two modules is linked against them alone, so an import they do
  // not offer fails instantiation; a module that imports from elsewhere
  // gets a trap for every function import not offered.
  const declared = WebAssembly.Module.imports(module);
  if (declared.every((imp) => IMPORT_MODULES.has(imp.module))) return table;
  for (const imp of declared) {
    if (Object.hasOwn(table, imp.module) && Object.hasOwn(table[imp.module], imp.name)) continue;
    if (imp.kind !== "function") continue; // instantiation fails, as under Wasmtime
    table[imp.module] ??= {};
    table[imp.module][imp.name] = () => {
      throw new WebAssembly.RuntimeError(`call to unknown import ${imp.module}::${imp.name}`);
    };
  }
  return table;
}

/** Instantiate the module and run `_start` (entry null: a command) or
 * `entry` (an export called on its own, after `_initialize` if exported):
 * [exit code, note for stderr], as wasm.py's _instantiate_and_run. */
function runModule(module, host, entry = null) {
  try {
    let instance;
    try {
      instance = new WebAssembly.Instance(module, imports(module, host));
    } catch (e) {
      // A start function that trapped or exited stops the guest like _start would.
      if (e instanceof ProcExit || e instanceof OutputTooLarge || e instanceof WebAssembly.RuntimeError) throw e;
      return [EXIT_TRAP, `cannot instantiate the module: ${e.message}`];
    }
    const memory = instance.exports.memory;
    if (memory instanceof WebAssembly.Memory) host.memory = memory;
    const [functions, problem] = entryFunctions(instance.exports, entry);
    if (problem) return [EXIT_TRAP, problem];
    for (const f of functions) f();
    return [0, ""];
  } catch (e) {
    if (e instanceof ProcExit) return [e.code, ""];
    if (e instanceof OutputTooLarge) return [EXIT_TRAP, `a call's output exceeds ${OUTPUT_CAP >> 20} MiB`];
    if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) return [EXIT_TRAP, `trap: ${e.message}`];
    throw e;
  }
}

/** [the functions to run in order, or a note why the module cannot run]:
 * wasm.py's _entry_functions, notes word for word. */
function entryFunctions(exports, entry) {
  if (entry === null) {
    const start = exports._start;
    if (typeof start !== "function") return [[], "module has no _start function (not a WASI command)"];
    return [[start], ""];
  }
  const fn = Object.hasOwn(exports, entry) ? exports[entry] : undefined;
  if (typeof fn !== "function") return [[], `module exports no function ${pyRepr(entry)} to call`];
  if (!takesNothing(fn)) {
    return [[], `the called function ${pyRepr(entry)} must take no parameters and return nothing`];
  }
  const initialize = exports._initialize; // a reactor's constructors
  return [[...(typeof initialize === "function" ? [initialize] : []), fn], ""];
}

/** Whether an exported function's type is [] -> [] (linking checks it; a
 * type declared in a larger recursion group of the GC proposal would not
 * match, a case Wasmtime's check by parameters and results accepts). */
function takesNothing(fn) {
  if (fn.length !== 0) return false;
  try {
    new WebAssembly.Instance(NO_PARAMS_NO_RESULTS, { m: { f: fn } });
    return true;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ main

const EXIT_UNSUPPORTED = 4; // node.py: a module this V8 does not compile
const EXIT_NEEDS_BUILD = 5; // node.py: the step requests steps (only its build answers)

function fail(message) {
  process.stderr.write(`kiln node engine: ${message}\n`);
  process.exit(3);
}

function run(request, fs, host) {
  const [, , node] = (() => {
    try {
      return fs.resolve(fs.root, request.argv[0] ?? "", true);
    } catch {
      return [null, null, undefined];
    }
  })();
  if (!node || node.kind !== "file" || node.blob === null) {
    fail(`the action's module ${JSON.stringify(request.argv[0] ?? "")} is not a file in its input root`);
  }
  for (const path of request.outputs) fs.allowFile(path);
  fs.allowDir("tmp");
  let module;
  try {
    module = new WebAssembly.Module(readFileSync(request.blobs[node.blob]));
  } catch (e) {
    // Not compiled by this V8: the caller says which proposals it may lack.
    process.stderr.write(`kiln node engine: Node.js ${process.version} cannot compile the module: ${e.message}\n`);
    process.exit(EXIT_UNSUPPORTED);
  }
  return runModule(module, host);
}

function main() {
  const [requestPath, resultDir, askFd, answerFd] = process.argv.slice(2);
  const request = JSON.parse(readFileSync(requestPath, "utf8"));
  if (request.abi !== ABI_VERSION) fail(`request wants contract ${request.abi}; this host runs ${ABI_VERSION}`);
  const channel = askFd === undefined ? null : [Number(askFd), Number(answerFd)];
  const calls = new Calls(request, channel, resultDir);
  const fs = new FileSystem(request);
  const host = new Host(fs, request.argv, request.env, Buffer.from(request.seed, "hex"));
  host.kiln = new KilnImports(host, calls, null);
  const [exitCode, note] = run(request, fs, host);
  if (note) host.stderr.write(Buffer.from(`kiln: ${note}\n`));

  const chunks = [];
  let offset = 0;
  const range = (bytes) => {
    chunks.push(bytes);
    offset += bytes.length;
    return [offset - bytes.length, bytes.length];
  };
  const describe = (node) => {
    if (node.kind === "file") return { kind: "file", data: range(fs.content(node).view()) };
    if (node.kind === "symlink") return { kind: "symlink", target: node.target };
    const entries = {};
    for (const name of [...fs.entries(node).keys()].sort(byName)) entries[name] = describe(fs.entries(node).get(name));
    return { kind: "dir", entries };
  };
  const outputs = {};
  for (const path of request.outputs) {
    let node;
    try {
      [, , node] = fs.resolve(fs.root, path, false);
    } catch {
      continue;
    }
    if (node) outputs[path] = describe(node);
  }
  const result = {
    exit_code: exitCode,
    stdout: range(host.stdout.data.view()),
    stderr: range(host.stderr.data.view()),
    outputs,
  };
  writeFileSync(join(resultDir, "data.bin"), Buffer.concat(chunks));
  writeFileSync(join(resultDir, "result.json"), JSON.stringify(result));
}

main();
