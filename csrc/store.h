/* pyactor shared-memory object store: the one public header.
 *
 * A plasma-like store that every process on a host maps. One POSIX shared-memory segment per node
 * (/dev/shm/pyactor-...) holds, at fixed offsets, a header with a process-shared robust mutex,
 * a client table, an object table (entries + hash index), a pool of pin records, and the heap that
 * holds object bytes. Everything inside the segment refers to everything else by offset, since
 * each process maps it at a different address.
 *
 * Object lifecycle (who moves an object there):
 *   pa_create (writer)  -> CREATED   bytes writable by the writer, invisible to readers
 *   pa_seal   (writer)  -> SEALED    immutable; pa_get pins it, pa_release unpins it
 *   pa_abort  (writer)  -> gone      an unsealed object is dropped
 *   pa_delete (owner)   -> gone      the id vanishes at once; the space is freed at the last unpin
 *   eviction  (store)   -> gone      sealed, evictable, unpinned objects, least recently used first
 *   spilling  (node)    -> gone      sealed, unevictable, unpinned objects, least recently used
 *                                    first, once the node has written them to disk:
 *                                    pa_spill_candidates, then pa_get + write + pa_spill_done
 *
 * Every function returns a PA_OK / PA_ERR_* code; the library never prints, aborts or exits.
 *
 * This file is also the cffi cdef source: pyactor/_private/store_build.py drops every preprocessor
 * line and everything between "#ifndef PA_CDEF" and its "#endif", so what remains must be plain C
 * declarations that cffi can parse.
 */
#ifndef PYACTOR_STORE_H
#define PYACTOR_STORE_H

#ifndef PA_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

/* Fixed-size binary object ids. */
#define PA_OBJECT_ID_SIZE 20
/* Allocations start on this boundary. */
#define PA_ALIGNMENT 64
/* Most processes that may attach one segment at the same time. */
#define PA_MAX_CLIENTS 1024

/* Return codes. */
#define PA_OK 0
#define PA_ERR_NOT_FOUND 1       /* no object with that id */
#define PA_ERR_EXISTS 2          /* an object with that id already exists */
#define PA_ERR_NOT_SEALED 3      /* the object is still being written */
#define PA_ERR_SEALED 4          /* the object is sealed (abort/seal of a sealed object) */
#define PA_ERR_FULL 5            /* no space, even after evicting what may be evicted */
#define PA_ERR_TABLE_FULL 6      /* the object table has no free entry */
#define PA_ERR_PINS_FULL 7       /* the pin record pool is exhausted */
#define PA_ERR_CLIENTS_FULL 8    /* the client table is full */
#define PA_ERR_BAD_SEGMENT 9     /* not a pyactor store segment (bad magic or layout) */
#define PA_ERR_VERSION 10        /* a segment made by another layout version */
#define PA_ERR_SEGMENT_EXISTS 11 /* pa_store_create: a segment with that name exists */
#define PA_ERR_NO_SEGMENT 12     /* pa_store_attach: no segment with that name */
#define PA_ERR_SYS 13            /* a system call failed; errno says which */
#define PA_ERR_INVALID 14        /* an argument is out of range */
#define PA_ERR_NOT_PINNED 15     /* pa_release of a pin this client does not hold */
#define PA_ERR_CLOSED 16         /* the handle was detached */
#define PA_ERR_CORRUPT 17        /* pa_debug_check found an inconsistency; or lock unrecoverable */
#define PA_ERR_BUSY 18           /* pa_spill_done: another client pins the object */

/* Entry states, as reported by pa_debug_object_info. */
#define PA_STATE_FREE 0
#define PA_STATE_CREATED 1
#define PA_STATE_SEALED 2
#define PA_STATE_DELETED 3 /* deleted while pinned: invisible, freed at the last release */

/* Flags of pa_create. */
#define PA_FLAG_EVICTABLE 1

typedef struct pa_store pa_store; /* a process-local handle on one mapped segment */

typedef struct {
    uint64_t capacity_bytes;     /* heap size */
    uint64_t used_bytes;         /* sum of allocated block sizes (headers included) */
    uint64_t free_bytes;         /* capacity_bytes - used_bytes */
    uint64_t largest_free_bytes; /* the largest block a create could get without eviction */
    uint64_t object_count;       /* ids visible to lookups (created or sealed) */
    uint64_t pinned_count;       /* objects with at least one pin (deleted ones included) */
    uint64_t evictions;          /* objects evicted since creation */
    uint64_t evicted_bytes;      /* their allocated bytes */
    uint64_t client_count;       /* attached clients */
    uint64_t max_objects;        /* object table capacity */
    uint64_t recoveries;         /* times the lock was found with a dead owner and repaired */
    uint64_t spillable_bytes;    /* allocated bytes of sealed, unevictable, unpinned objects */
} pa_stats;

/* What pa_get returns by value. */
typedef struct {
    int32_t code;
    uint32_t reserved;
    uint64_t handle; /* pass to pa_release */
    uint8_t *data;
    uint64_t size;
} pa_view;

/* What pa_create returns by value. */
typedef struct {
    int32_t code;
    uint32_t reserved;
    uint64_t offset; /* of the object's bytes from pa_base() */
    uint8_t *data;
} pa_new_object;

typedef struct {
    uint32_t state;
    uint32_t flags;
    uint32_t pin_count;
    uint32_t creator_client;
    uint64_t offset;      /* of the bytes, from pa_base() */
    uint64_t size;        /* as created */
    uint64_t alloc_bytes; /* block size, header included */
} pa_object_info;

/* Segment lifecycle. name is the shm name without the leading '/', e.g. "pyactor-node1". */
int pa_store_create(const char *name, uint64_t capacity_bytes, uint64_t max_objects,
                    pa_store **out);
int pa_store_attach(const char *name, pa_store **out);
/* Releases this client's pins and slot, keeps the mapping (safe while views are still alive). */
int pa_store_detach(pa_store *s);
/* Detach (if not done) + unmap + free the handle. NULL is accepted. */
void pa_store_close(pa_store *s);
int pa_store_unlink(const char *name);

uint8_t *pa_base(pa_store *s);
uint64_t pa_mapped_bytes(pa_store *s);
uint32_t pa_client_id(pa_store *s);
uint64_t pa_alloc_bytes_for(uint64_t size_bytes); /* block size a create of size_bytes takes */
uint64_t pa_default_max_objects(uint64_t capacity_bytes);

/* Objects. id points to PA_OBJECT_ID_SIZE bytes. */
pa_new_object pa_create(pa_store *s, const char *id, uint64_t size_bytes, uint32_t flags);
int pa_seal(pa_store *s, const char *id);
int pa_abort(pa_store *s, const char *id);
pa_view pa_get(pa_store *s, const char *id);
/* unused is ignored: it lets a Python functools.partial(pa_release, s, handle) be a cffi gc
 * destructor, which is called with the cdata as its last argument. */
int pa_release(pa_store *s, uint64_t handle, void *unused);
int pa_delete(pa_store *s, const char *id);
int pa_contains(pa_store *s, const char *id); /* 1 sealed, 0 absent or unsealed, <0 -error */
int pa_set_evictable(pa_store *s, const char *id, int evictable);
int pa_stats_get(pa_store *s, pa_stats *out);

/* Spilling. Up to max_ids ids (PA_OBJECT_ID_SIZE bytes each, into ids_out) of sealed, unpinned,
 * unevictable objects, least recently used first, until their blocks add up to need_bytes. */
int pa_spill_candidates(pa_store *s, uint64_t need_bytes, char *ids_out, uint64_t max_ids,
                        uint64_t *count_out);
/* Releases a pin taken by pa_get and, if no other pin remains, deletes the object (its bytes are
 * on disk now): PA_OK deleted, PA_ERR_BUSY still pinned by others (kept), PA_ERR_NOT_FOUND its
 * owner deleted it meanwhile (and it is gone now). */
int pa_spill_done(pa_store *s, uint64_t handle);

/* Clients. */
int pa_release_client(pa_store *s, uint32_t client_id);
int pa_reap_dead_clients(pa_store *s, uint32_t *reaped);

/* Copy n bytes with up to nthreads threads (nthreads <= 0: choose from n and the CPU count). */
int pa_memcpy_parallel(void *dst, const void *src, uint64_t n, int nthreads);
uint64_t pa_parallel_copy_threshold(void);
void pa_set_parallel_copy_threshold(uint64_t n);

/* Spill files (spill_io.c): write n bytes at src to a new file at path from up to nthreads
 * threads (<= 0: a default). mode: PA_SPILL_HYBRID (direct I/O where the filesystem takes it,
 * with one buffered thread alongside), PA_SPILL_DIRECT_ONLY, PA_SPILL_BUFFERED. *layout_out
 * receives what reading needs: the file offset of byte 0 (the source address modulo the I/O
 * block), or'ed with PA_SPILL_DIRECT if the file has direct I/O's layout. PA_ERR_SYS with errno
 * on failure (the file is removed). pa_spill_read fills dst (n bytes) from such a file. */
#define PA_SPILL_DIRECT 65536
#define PA_SPILL_HYBRID 0
#define PA_SPILL_DIRECT_ONLY 1
#define PA_SPILL_BUFFERED 2
int pa_spill_write(const char *path, const void *src, uint64_t n, int nthreads, int mode,
                   uint32_t *layout_out);
int pa_spill_read(const char *path, void *dst, uint64_t n, uint32_t layout, int nthreads,
                  int mode);

const char *pa_strerror(int code);

/* Test and debug hooks. */
int pa_debug_check(pa_store *s, char *message, uint64_t message_size); /* walk + validate all */
int pa_debug_lock(pa_store *s);  /* take the store lock and never release it (crash tests) */
/* Take the lock and leave a half-done update behind, as a process killed mid-section would:
 * how = 0: a heap block allocated for no entry; 1: the free lists emptied; 2: counters and the
 * LRU list wrong; 3: an entry half-built (fields written, state not committed). Never unlocks. */
int pa_debug_tear(pa_store *s, int how);
int pa_debug_object_info(pa_store *s, const char *id, pa_object_info *out);

/* One row of pa_list_objects: an object, or one client's pins of the object listed before. */
typedef struct {
    uint8_t id[20];      /* the object's id (PA_OBJECT_ID_SIZE bytes) */
    uint32_t state;      /* PA_STATE_* */
    uint32_t flags;      /* PA_FLAG_* */
    uint32_t pin_count;  /* pins of every client */
    int32_t creator_pid; /* the creating client's pid, 0 if its slot is gone */
    uint64_t size;
    uint64_t alloc_bytes;
    int32_t pin_pid;     /* in a pin row: the pinning client's pid; -1 in an object row */
    uint32_t pins;       /* in a pin row: that client's pins */
} pa_listed;

/* Lists every live object, each followed by one row per client pinning it, into out (at most
 * max rows; *count says how many were needed, which may exceed max). Observability only. */
int pa_list_objects(pa_store *s, pa_listed *out, uint64_t max, uint64_t *count);
int pa_debug_dump_heap(pa_store *s, char *out, uint64_t out_size); /* "offset size free\n" lines */

#endif /* PYACTOR_STORE_H */
