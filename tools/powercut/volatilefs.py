#!/usr/bin/env python3
"""A FUSE filesystem that loses what was not synced when the power goes.

    volatilefs.py BACKING MOUNTPOINT        (runs in the foreground until unmounted/killed)

Files live in BACKING (the "disk"). Data written through MOUNTPOINT stays in this process's
memory (the "page cache") until the file is fsync'ed or fdatasync'ed: only then is the
file's content written to BACKING and fsync'ed there. Killing this process with SIGKILL is
the power cut: everything not synced is gone, and a new mount of BACKING shows exactly what
a machine would find on its disk after the power came back.

The model, precisely:
  * file data (write, truncate) is volatile until fsync/fdatasync of that file;
  * namespace operations (create, mkdir, unlink, rmdir, rename, chmod, chown, symlink,
    link) go to BACKING at once and count as durable (a lenient model of directory
    metadata; a real disk may lose them too, so this can only under-report losses);
  * a file synced then renamed keeps its synced content; unsynced content of a renamed or
    unlinked file is carried along in memory or dropped with it.

Used by tests/it/power_cut.rs with weft's SQLite database and a private PostgreSQL data
directory on the mount. Needs fusepy (pip) and libfuse2 (Debian); mounts need root.
Single-threaded (fusepy's nothreads): simple and enough for a test.
"""
import errno
import os
import stat
import sys

from fuse import FUSE, FuseOSError, Operations, fuse_get_context


class File:
    """The in-memory, not yet synced view of one file's data."""

    def __init__(self, data: bytearray):
        self.data = data
        self.dirty = False


class VolatileFS(Operations):
    def __init__(self, root):
        self.root = root
        self.files = {}  # relative path -> File (loaded on first data access)
        self.fds = {}
        self.next_fd = 1

    # ---- helpers
    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _file(self, path):
        f = self.files.get(path)
        if f is None:
            with open(self._p(path), "rb") as h:
                f = File(bytearray(h.read()))
            self.files[path] = f
        return f

    def _own(self, full):
        uid, gid, _ = fuse_get_context()
        os.lchown(full, uid, gid)

    def _sync(self, path):
        f = self.files.get(path)
        if f is None or not f.dirty:
            return
        fd = os.open(self._p(path), os.O_WRONLY)
        try:
            os.ftruncate(fd, len(f.data))
            os.pwrite(fd, bytes(f.data), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        f.dirty = False

    # ---- metadata
    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        attrs = {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode",
                                              "st_mtime", "st_nlink", "st_uid")}
        f = self.files.get(path)
        attrs["st_size"] = len(f.data) if f is not None else st.st_size
        return attrs

    def access(self, path, amode):
        if not os.path.lexists(self._p(path)):
            raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def readlink(self, path):
        return os.readlink(self._p(path))

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                             "f_favail", "f_ffree", "f_files", "f_flag",
                                             "f_frsize", "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.lchown(self._p(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._p(path), times)

    # ---- namespace (durable at once)
    def mkdir(self, path, mode):
        full = self._p(path)
        os.mkdir(full, mode)
        self._own(full)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def mknod(self, path, mode, dev):
        full = self._p(path)
        os.mknod(full, mode, dev)
        self._own(full)

    def symlink(self, target, source):
        full = self._p(target)
        os.symlink(source, full)
        self._own(full)

    def link(self, target, source):
        os.link(self._p(source), self._p(target))

    def unlink(self, path):
        os.unlink(self._p(path))
        self.files.pop(path, None)

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))
        self.files.pop(new, None)
        if old in self.files:
            self.files[new] = self.files.pop(old)

    # ---- files
    def _fd(self, path):
        fd = self.next_fd
        self.next_fd += 1
        self.fds[fd] = path
        return fd

    def open(self, path, flags):
        if not os.path.exists(self._p(path)):
            raise FuseOSError(errno.ENOENT)
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return self._fd(path)

    def create(self, path, mode, fi=None):
        full = self._p(path)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT, mode)
        os.close(fd)
        self._own(full)
        self.files[path] = File(bytearray())
        return self._fd(path)

    def read(self, path, size, offset, fh):
        f = self._file(path)
        return bytes(f.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        f = self._file(path)
        end = offset + len(data)
        if end > len(f.data):
            f.data.extend(b"\0" * (end - len(f.data)))
        f.data[offset:end] = data
        f.dirty = True
        return len(data)

    def truncate(self, path, length, fh=None):
        f = self._file(path)
        if length < len(f.data):
            del f.data[length:]
        else:
            f.data.extend(b"\0" * (length - len(f.data)))
        f.dirty = True

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        self.fds.pop(fh, None)
        return 0

    def fsync(self, path, datasync, fh):
        self._sync(path)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: volatilefs.py BACKING MOUNTPOINT")
    backing, mountpoint = sys.argv[1], sys.argv[2]
    FUSE(VolatileFS(os.path.abspath(backing)), mountpoint, foreground=True, nothreads=True,
         allow_other=True, default_permissions=True)


if __name__ == "__main__":
    main()
