// The second engine: one WASI preview 1 command run by Node's own
// WebAssembly engine (V8) in the same virtual world as kiln's Python host
// (kiln/exec/wasi/host.py and vfs.py). Both sides implement the contract
// named by ABI_VERSION; a difference in what a guest can observe between
// them is a bug in one of them, and `kiln check --engine node` finds it.
//
//   node node_host.mjs REQUEST.json RESULT_DIR
//
// REQUEST.json (written by kiln.exec.node):
//   abi, argv, env [[name, value]], seed (hex), outputs [path],
//   root (digest or null), dirs {digest: [[name, "file"|"symlink"|"dir", payload]]},
//   blobs {digest: path of the blob's file}
// RESULT_DIR receives result.json {exit_code, stdout, stderr, outputs} and
// data.bin; byte ranges in result.json are [offset, length] into data.bin.
// Exit status: 0 when the guest ran (whatever its own exit code), 3 when the
// request cannot be run (the reason on stderr).

import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const ABI_VERSION = "kiln-wasi-p1-v2";
const REALTIME_EPOCH_NS = 946684800n * 1000000000n;
const MONOTONIC_STEP_NS = 1000n;
const OUTPUT_CAP = 64 * 1024 * 1024;
const MAX_SYMLINK_HOPS = 40;
const EXIT_TRAP = 134;

const E = {
  SUCCESS: 0, BADF: 8, EXIST: 20, FAULT: 21, INVAL: 28, ISDIR: 31, LOOP: 32, NOENT: 44,
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

const utf8 = new TextDecoder("utf-8", { fatal: true });

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
  }

  // ---------------------------------------------------------------- glue

  mem() {
    return new Uint8Array(this.memory.buffer);
  }
  read(ptr, len) {
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
  const table = { wasi_snapshot_preview1: wasi };
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module === "wasi_snapshot_preview1" && WASI_IMPORTS.includes(imp.name)) continue;
    if (imp.kind !== "function") continue; // instantiation fails, as under Wasmtime
    table[imp.module] ??= {};
    table[imp.module][imp.name] = () => {
      throw new WebAssembly.RuntimeError(`call to unknown import ${imp.module}::${imp.name}`);
    };
  }
  return table;
}

// ------------------------------------------------------------------ main

const EXIT_UNSUPPORTED = 4; // node.py: a module this V8 does not compile

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
  let instance;
  try {
    instance = new WebAssembly.Instance(module, imports(module, host));
  } catch (e) {
    return [EXIT_TRAP, `cannot instantiate the module: ${e.message}`];
  }
  host.memory = instance.exports.memory;
  const start = instance.exports._start;
  if (typeof start !== "function") return [EXIT_TRAP, "module has no _start function (not a WASI command)"];
  try {
    start();
    return [0, ""];
  } catch (e) {
    if (e instanceof ProcExit) return [e.code, ""];
    if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) return [EXIT_TRAP, `trap: ${e.message}`];
    throw e;
  }
}

function main() {
  const [requestPath, resultDir] = process.argv.slice(2);
  const request = JSON.parse(readFileSync(requestPath, "utf8"));
  if (request.abi !== ABI_VERSION) fail(`request wants contract ${request.abi}; this host runs ${ABI_VERSION}`);
  const fs = new FileSystem(request);
  const host = new Host(fs, request.argv, request.env, Buffer.from(request.seed, "hex"));
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
