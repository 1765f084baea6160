/* Spill files: an object's bytes written to a file and read back, straight from and into the
 * shared segment, with direct I/O and several requests in flight.
 *
 * Why direct I/O. A buffered write copies every byte into the page cache (the kernel allocates,
 * copies and accounts each page: measured here, 0.4-1.6 CPU seconds per GB on a loaded host) and
 * leaves a second copy of the object in memory, the very thing a full store spills to be rid of.
 * With O_DIRECT the disk reads the segment's pages itself (0.03 CPU s/GB in C, 0.11 for a whole
 * spill) and nothing is cached. Requests of CHUNK bytes from several threads keep the disk's
 * queue busy; the file is preallocated, so that ext4 takes aligned direct writes into it under a
 * shared inode lock, concurrently. PA_SPILL_HYBRID adds one buffered thread beside them (the
 * node does not use it: spilling.py says why; bench/store_bench.py measures it).
 *
 * Layout. Direct I/O needs memory addresses, file offsets and lengths aligned to the disk's
 * block; BLOCK, 4096, is a multiple of the usual 512 and 4096 bytes. An object starts anywhere
 * 64-byte aligned in the segment, so the file keeps
 * the object's address modulo BLOCK: it starts with `pad` = address % BLOCK bytes of zeros and
 * object byte k lies at file offset pad + k. The blocks in the middle then go from the segment to
 * the disk as they are; the first and last (partly the object's) go through an aligned
 * bounce buffer, and so does every piece of a read whose destination's alignment differs from
 * the writer's (it lands in a chunk-sized bounce buffer, then is copied). The caller keeps
 * `layout` (pad, and whether the file was written directly) to read the file back or map it.
 *
 * A filesystem without O_DIRECT (the open fails with EINVAL), or a disk whose blocks are larger
 * than BLOCK (the I/O fails with EINVAL), gets plain buffered I/O with pad 0. Every function returns PA_OK or PA_ERR_SYS with errno set
 * to the first failure; nothing prints.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define BLOCK 4096u           /* alignment used for direct I/O (a multiple of every usual block) */
#define CHUNK (8u << 20)      /* bytes per request */
#define MAX_IO_THREADS 8

typedef struct {
    int fd;                   /* opened with O_DIRECT if direct */
    int buffered_fd;          /* the same file without it (-1 if none) */
    int reading;
    int direct;
    uint8_t *object;          /* the object's bytes in the segment */
    uint64_t n;               /* object size */
    uint64_t pad;             /* file offset of object byte 0 */
    uint64_t file_bytes;      /* file length written / read */
    uint64_t next;            /* atomic: file offset of the next unclaimed piece */
    int error;                /* atomic: first errno, 0 if none */
} spill_job;

static uint64_t round_up(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

static int full_io(spill_job *j, int fd, uint8_t *buf, uint64_t len, uint64_t off) {
    while (len) {
        ssize_t r = j->reading ? pread(fd, buf, len, (off_t)off) : pwrite(fd, buf, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (r == 0) return j->reading ? EIO : ENOSPC; /* short file / no progress */
        buf += r, off += (uint64_t)r, len -= (uint64_t)r;
    }
    return 0;
}

/* One piece [off, off + len) of the file: straight from/to the segment when the object covers
 * it and its address is aligned as the file offset (or when this thread does buffered I/O, which
 * has no alignment rules: the bytes outside the object stay the file's zeros), else through the
 * thread's bounce buffer. */
static int do_piece(spill_job *j, int buffered, uint64_t off, uint64_t len, uint8_t **bounce) {
    uint64_t lo = off > j->pad ? off : j->pad;                       /* object bytes covered, */
    uint64_t hi = off + len < j->pad + j->n ? off + len : j->pad + j->n; /* in file offsets */
    uint8_t *at = j->object + (off - j->pad);                        /* where file byte off maps */
    int inside = off >= j->pad && off + len <= j->pad + j->n;
    if (buffered) return full_io(j, j->buffered_fd, j->object + (lo - j->pad), hi - lo, lo);
    if (inside && ((uintptr_t)at % BLOCK) == 0) return full_io(j, j->fd, at, len, off);
    if (!*bounce && posix_memalign((void **)bounce, BLOCK, CHUNK) != 0) return ENOMEM;
    if (j->reading) {
        int err = full_io(j, j->fd, *bounce, len, off);
        if (!err) memcpy(j->object + (lo - j->pad), *bounce + (lo - off), hi - lo);
        return err;
    }
    memset(*bounce, 0, len);
    memcpy(*bounce + (lo - off), j->object + (lo - j->pad), hi - lo);
    return full_io(j, j->fd, *bounce, len, off);
}

/* Pieces: the first block and the last (partial) block alone, CHUNK bytes in between, so only
 * the edges need a bounce when the alignments agree. */
static int next_piece(spill_job *j, uint64_t *off, uint64_t *len) {
    uint64_t first_end = j->direct && j->pad ? BLOCK : 0;
    uint64_t last_start = j->direct ? (j->pad + j->n) / BLOCK * BLOCK : j->file_bytes;
    for (;;) {
        uint64_t pos = __atomic_load_n(&j->next, __ATOMIC_RELAXED);
        if (pos >= j->file_bytes) return 0;
        uint64_t end;
        if (pos < first_end) end = first_end;
        else if (pos >= last_start) end = j->file_bytes;
        else end = pos + CHUNK < last_start ? pos + CHUNK : last_start;
        if (end > j->file_bytes) end = j->file_bytes;
        if (__atomic_compare_exchange_n(&j->next, &pos, end, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            *off = pos, *len = end - pos;
            return 1;
        }
    }
}

static void *io_loop(spill_job *j, int buffered) {
    uint8_t *bounce = NULL;
    uint64_t off, len;
    while (!__atomic_load_n(&j->error, __ATOMIC_RELAXED) && next_piece(j, &off, &len)) {
        int err = do_piece(j, buffered, off, len, &bounce);
        if (err) {
            int none = 0;
            __atomic_compare_exchange_n(&j->error, &none, err, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        }
    }
    free(bounce);
    return NULL;
}

static void *direct_worker(void *arg) { return io_loop(arg, 0); }

/* The caller's thread does buffered I/O when there is a buffered descriptor (always, without
 * direct I/O), the others direct I/O: the disk's queue and the page cache fill at the same time,
 * and whichever is faster (the cache on an idle machine, the disk when the CPUs are busy, since
 * direct I/O costs them almost nothing) takes more pieces. */
static int run_job(spill_job *j, int nthreads) {
    if (nthreads <= 0) nthreads = 4; /* requests in flight; the threads mostly wait on the disk */
    if (nthreads > MAX_IO_THREADS) nthreads = MAX_IO_THREADS;
    uint64_t pieces = j->file_bytes / CHUNK + 2;
    if ((uint64_t)nthreads > pieces) nthreads = (int)pieces;
    pthread_t threads[MAX_IO_THREADS];
    int started[MAX_IO_THREADS] = {0};
    if (j->direct)
        for (int t = 1; t < nthreads; t++)
            started[t] = pthread_create(&threads[t], NULL, direct_worker, j) == 0;
    io_loop(j, j->buffered_fd >= 0);
    for (int t = 1; t < nthreads; t++)
        if (started[t]) pthread_join(threads[t], NULL);
    return j->error;
}

static int open_file(const char *path, int reading, int want_direct, int *direct) {
    int flags = (reading ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC) | O_CLOEXEC;
    if (want_direct) {
        int fd = open(path, flags | O_DIRECT, 0600);
        if (fd >= 0 || errno != EINVAL) {
            *direct = fd >= 0;
            return fd;
        }
    }
    *direct = 0;
    return open(path, flags, 0600);
}

static int spill_write(const char *path, const void *src, uint64_t n, int nthreads, int mode,
                       uint32_t *layout_out) {
    int allow_direct = mode != PA_SPILL_BUFFERED, hybrid = mode == PA_SPILL_HYBRID;
    int direct;
    int fd = open_file(path, 0, allow_direct, &direct);
    if (fd < 0) return PA_ERR_SYS;
    spill_job j = {fd, direct ? -1 : fd, 0, direct, (uint8_t *)src, n, 0, n, 0, 0};
    int err = 0;
    if (direct) {
        j.pad = (uintptr_t)src % BLOCK;
        j.file_bytes = round_up(j.pad + n, BLOCK);
        if (hybrid) {
            j.buffered_fd = open(path, O_WRONLY | O_CLOEXEC);
            if (j.buffered_fd < 0) err = errno;
        }
    }
    if (!err && j.file_bytes && fallocate(fd, 0, 0, (off_t)j.file_bytes) != 0 &&
        errno != EOPNOTSUPP)
        err = errno; /* ENOSPC now rather than halfway */
    if (!err) err = run_job(&j, nthreads);
    if (j.buffered_fd >= 0 && j.buffered_fd != fd && close(j.buffered_fd) != 0 && !err) err = errno;
    if (close(fd) != 0 && !err) err = errno;
    if (err) {
        unlink(path);
        errno = err;
        return PA_ERR_SYS;
    }
    *layout_out = (uint32_t)j.pad | (direct ? PA_SPILL_DIRECT : 0u);
    return PA_OK;
}

int pa_spill_write(const char *path, const void *src, uint64_t n, int nthreads, int mode,
                   uint32_t *layout_out) {
    int rc = spill_write(path, src, n, nthreads, mode, layout_out);
    if (rc == PA_ERR_SYS && errno == EINVAL && mode != PA_SPILL_BUFFERED)
        rc = spill_write(path, src, n, nthreads, PA_SPILL_BUFFERED, layout_out);
    return rc;
}

static int spill_read(const char *path, void *dst, uint64_t n, uint32_t layout, int nthreads,
                      int mode) {
    int want_direct = (layout & PA_SPILL_DIRECT) != 0 && mode != PA_SPILL_BUFFERED, direct;
    int hybrid = mode == PA_SPILL_HYBRID;
    int fd = open_file(path, 1, want_direct, &direct);
    if (fd < 0) return PA_ERR_SYS;
    uint64_t pad = layout & ~(uint32_t)PA_SPILL_DIRECT;
    spill_job j = {fd, direct ? -1 : fd, 1, direct, (uint8_t *)dst, n, pad, pad + n, 0, 0};
    int err = 0;
    if (direct) {
        j.file_bytes = round_up(pad + n, BLOCK);
        if (hybrid) {
            j.buffered_fd = open(path, O_RDONLY | O_CLOEXEC);
            if (j.buffered_fd < 0) err = errno;
        }
    }
    if (!err) err = run_job(&j, nthreads);
    if (j.buffered_fd >= 0 && j.buffered_fd != fd) close(j.buffered_fd);
    close(fd);
    if (err) {
        errno = err;
        return PA_ERR_SYS;
    }
    return PA_OK;
}

int pa_spill_read(const char *path, void *dst, uint64_t n, uint32_t layout, int nthreads,
                  int mode) {
    int rc = spill_read(path, dst, n, layout, nthreads, mode);
    if (rc == PA_ERR_SYS && errno == EINVAL && mode != PA_SPILL_BUFFERED)
        rc = spill_read(path, dst, n, layout, nthreads, PA_SPILL_BUFFERED);
    return rc;
}
