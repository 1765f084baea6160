/* Layout of the shared segment and the helpers the store's C files share (not part of the API).
 *
 * Segment layout (all offsets from the segment start, each table 64-byte aligned):
 *
 *   [pa_header | clients[PA_MAX_CLIENTS] | entries[max_objects] | index[nbuckets] |
 *    pins[max_pins] | heap (capacity bytes) ]
 *
 * Crash consistency. The entries and the pin records they link to are the source of truth. An
 * entry's fields are written before its state word (a release store), which is the commit point.
 * Everything else (heap free lists and boundary tags, hash index, LRU list, entry/pin free lists,
 * counters) is derived, and pa_repair rebuilds it from the entries. When a process dies holding the
 * robust mutex, the next locker gets EOWNERDEAD and runs pa_repair before going on, so a death
 * anywhere inside a critical section leaves a consistent store. Zeroed memory is a valid empty
 * table (state FREE, empty bucket), so creation touches only the header and one heap page.
 */
#ifndef PYACTOR_STORE_INTERNAL_H
#define PYACTOR_STORE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "store.h"

#define PA_MAGIC 0x3154534f54434150ULL /* "PACTOST1" little-endian */
#define PA_VERSION 2u
#define PA_NIL 0xffffffffu

/* Heap: blocks of multiples of 64 bytes; a 64-byte header (the boundary tag) precedes the bytes. */
#define PA_BLOCK_HEADER 64u
#define PA_BLOCK_FREE 1u
#define PA_BLOCK_MAGIC 0x6b6c62u
/* Segregated free lists, TLSF-style: 16 exact small classes, then 8 sub-classes per power of two
 * (in units of 64 bytes). */
#define PA_SMALL_BINS 16u
#define PA_SUB_BITS 3u
#define PA_NBINS (PA_SMALL_BINS + 60u * (1u << PA_SUB_BITS))
#define PA_BITMAP_WORDS ((PA_NBINS + 63u) / 64u)

typedef struct {
    uint64_t size;      /* block size in bytes, header included */
    uint64_t prev_size; /* size of the block just below (0 for the first block) */
    uint32_t flags;     /* PA_BLOCK_FREE */
    uint32_t magic;     /* PA_BLOCK_MAGIC */
    uint32_t entry;     /* owning entry index while allocated */
    uint32_t reserved;
    uint64_t next_free; /* free-list links (segment offsets, 0 = none) while free */
    uint64_t prev_free;
    uint64_t pad[2];
} pa_block;

typedef struct {
    uint64_t start, end; /* heap bounds, segment offsets */
    uint64_t used_bytes;
    uint64_t free_heads[PA_NBINS];
    uint64_t bitmap[PA_BITMAP_WORDS];
} pa_heap;

typedef struct {
    uint8_t id[PA_OBJECT_ID_SIZE];
    uint32_t state; /* PA_STATE_*, written last (commit point) */
    uint32_t gen;   /* bumped each time the entry is reused; part of pin handles */
    uint32_t flags; /* PA_FLAG_EVICTABLE */
    uint32_t creator;
    uint32_t pin_count; /* derived: sum of the pin records' counts */
    uint32_t pin_head;  /* first pin record, PA_NIL if none */
    uint32_t lru_prev, lru_next; /* derived */
    uint32_t next_free;          /* derived: entry free list */
    uint32_t hash;
    uint32_t list; /* derived: PA_LIST_* the lru links belong to */
    uint64_t offset; /* block offset (segment offset of its header) */
    uint64_t size;   /* object bytes as created */
    uint64_t alloc_bytes;
    uint64_t last_use; /* LRU clock */
} pa_entry;

typedef struct {
    uint32_t client;
    uint32_t count;
    uint32_t next; /* next record of the same entry, or free-list link; PA_NIL ends */
    uint32_t reserved;
} pa_pin;

#define PA_CLIENT_FREE 0u
#define PA_CLIENT_USED 1u
typedef struct {
    uint32_t state;
    uint32_t gen;
    int32_t pid;
    uint32_t reserved;
    uint64_t start_time; /* /proc/<pid>/stat field 22, 0 if unknown */
} pa_client;

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t header_bytes;
    uint64_t total_bytes;
    uint64_t clients_off, entries_off, index_off, pins_off;
    uint32_t max_clients, max_objects, index_mask, max_pins;
    /* Derived state (rebuilt by pa_repair). */
    uint32_t entries_hwm, entry_free;
    uint32_t pins_hwm, pin_free;
    uint32_t lru_head, lru_tail;
    uint64_t lru_bytes; /* allocated bytes of the objects in the LRU list */
    uint32_t spill_head, spill_tail; /* the spillable list, same order and links */
    uint64_t spill_bytes;
    uint64_t object_count, pinned_count, client_count;
    uint64_t clock;
    /* Counters. */
    uint64_t evictions, evicted_bytes, recoveries;
    pa_heap heap;
    pthread_mutex_t mutex __attribute__((aligned(64)));
} pa_header;

struct pa_store {
    uint8_t *base;
    uint64_t mapped_bytes;
    pa_header *hdr;
    pa_client *clients;
    pa_entry *entries;
    uint64_t *index; /* bucket = (hash << 32) | (entry index + 1); 0 = empty */
    pa_pin *pins;
    uint32_t client;
    uint32_t client_gen;
    int detached;
};

/* alloc.c */
void pa_heap_init(uint8_t *base, pa_heap *heap, uint64_t start, uint64_t end);
/* Returns the block offset, or 0 when no free block fits. */
uint64_t pa_heap_alloc(uint8_t *base, pa_heap *heap, uint64_t block_bytes, uint32_t entry);
void pa_heap_free(uint8_t *base, pa_heap *heap, uint64_t block_off);
uint64_t pa_heap_largest_free(uint8_t *base, const pa_heap *heap);
/* Rebuilds tags and free lists from sorted (offset, size) allocated blocks. */
typedef struct {
    uint64_t offset, size;
    uint32_t entry;
} pa_live_block;
void pa_heap_rebuild(uint8_t *base, pa_heap *heap, const pa_live_block *live, uint64_t n);
int pa_heap_check(uint8_t *base, const pa_heap *heap, char *msg, uint64_t msg_size);
int pa_heap_dump(uint8_t *base, const pa_heap *heap, char *out, uint64_t out_size);

static inline pa_block *pa_block_at(uint8_t *base, uint64_t off) {
    return (pa_block *)(base + off);
}

/* evict.c: two LRU lists (oldest at the head) over the same links: the sealed, evictable,
 * unpinned objects (PA_LIST_EVICT), which the store drops when full, and the sealed, unpinned
 * objects that are not evictable (PA_LIST_SPILL), which only their node may spill to disk. */
#define PA_LIST_NONE 0u
#define PA_LIST_EVICT 1u
#define PA_LIST_SPILL 2u
int pa_lru_eligible(const pa_entry *e);
uint32_t pa_list_for(const pa_entry *e); /* the list an entry belongs in now */
void pa_lru_push(pa_store *s, uint32_t idx);
void pa_lru_remove(pa_store *s, uint32_t idx);
/* Re-files idx after a change of state, pins or flags. */
void pa_lru_update(pa_store *s, uint32_t idx);
void pa_lru_rebuild(pa_store *s);
/* Evicts least recently used objects until a block of block_bytes fits or nothing is left;
 * returns the block offset or 0. */
uint64_t pa_evict_and_alloc(pa_store *s, uint64_t block_bytes, uint32_t entry);

/* store.c helpers shared with evict.c */
int pa_lock(pa_store *s); /* the store lock (repairs after a dead owner); PA_OK or an error */
void pa_unlock(pa_store *s);
void pa_entry_remove(pa_store *s, uint32_t idx); /* unindex, unlist, free block and entry */

static inline int pa_entry_live(const pa_entry *e) {
    uint32_t st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);
    return st == PA_STATE_CREATED || st == PA_STATE_SEALED || st == PA_STATE_DELETED;
}

#endif /* PYACTOR_STORE_INTERNAL_H */
