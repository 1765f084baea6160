/* The object table, the object lifecycle, the client table and the store lock.
 *
 * Data flow of one object: pa_create takes a free entry and a heap block, commits the entry
 * (state CREATED) and indexes its id; the writer fills the bytes through the pointer it got back;
 * pa_seal flips the state to SEALED, after which pa_get pins it for a client (a pin record per
 * (entry, client) with a count) and returns a pointer + a handle; pa_release(handle) unpins. A
 * delete unindexes the id at once and frees the block now, or at the last unpin (state DELETED).
 *
 * All of it runs under one process-shared robust mutex; see internal.h for how a process that dies
 * holding it is recovered from (pa_repair, below).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define NAME_PREFIX "pyactor-"
#define MIN_CAPACITY 4096u
#define PAGE 4096u

static inline uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

uint64_t pa_alloc_bytes_for(uint64_t size_bytes) {
    return PA_BLOCK_HEADER + round_up(size_bytes, PA_ALIGNMENT);
}

uint64_t pa_default_max_objects(uint64_t capacity_bytes) {
    uint64_t n = capacity_bytes / 8192u;
    return n < 4096u ? 4096u : n > (1u << 20) ? (1u << 20) : n;
}

/* ---- hashing and the id index (linear probing, backward-shift deletion) ---- */

static inline uint32_t hash_id(const char *id) {
    uint64_t a, b;
    uint32_t c;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    memcpy(&c, id + 16, 4);
    uint64_t h = (a ^ 0x9e3779b97f4a7c15ULL) * 0xbf58476d1ce4e5b9ULL;
    h ^= (b + (h >> 31)) * 0x94d049bb133111ebULL;
    h ^= ((uint64_t)c + (h >> 29)) * 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
    return (uint32_t)h;
}

static inline uint64_t bucket_of(uint32_t hash, uint32_t idx) {
    return ((uint64_t)hash << 32) | ((uint64_t)idx + 1u);
}

static uint32_t index_find(pa_store *s, const char *id, uint32_t hash) {
    uint32_t mask = s->hdr->index_mask;
    for (uint32_t pos = hash & mask;; pos = (pos + 1) & mask) {
        uint64_t b = s->index[pos];
        if (!b) return PA_NIL;
        if ((uint32_t)(b >> 32) == hash) {
            uint32_t idx = (uint32_t)b - 1u;
            if (memcmp(s->entries[idx].id, id, PA_OBJECT_ID_SIZE) == 0) return idx;
        }
    }
}

static void index_insert(pa_store *s, uint32_t idx, uint32_t hash) {
    uint32_t mask = s->hdr->index_mask;
    uint32_t pos = hash & mask;
    while (s->index[pos]) pos = (pos + 1) & mask;
    s->index[pos] = bucket_of(hash, idx);
}

static void index_remove(pa_store *s, uint32_t idx, uint32_t hash) {
    uint32_t mask = s->hdr->index_mask;
    uint64_t want = bucket_of(hash, idx);
    uint32_t i = hash & mask;
    while (s->index[i] != want) {
        if (!s->index[i]) return;
        i = (i + 1) & mask;
    }
    for (;;) { /* shift back later members of the probe run */
        uint32_t j = i;
        for (;;) {
            j = (j + 1) & mask;
            uint64_t b = s->index[j];
            if (!b) {
                s->index[i] = 0;
                return;
            }
            uint32_t home = (uint32_t)(b >> 32) & mask;
            int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays) {
                s->index[i] = b;
                i = j;
                break;
            }
        }
    }
}

/* ---- entries and pin records ---- */

static uint32_t entry_take(pa_store *s) {
    pa_header *h = s->hdr;
    if (h->entry_free != PA_NIL) {
        uint32_t idx = h->entry_free;
        h->entry_free = s->entries[idx].next_free;
        return idx;
    }
    if (h->entries_hwm < h->max_objects) return h->entries_hwm++;
    return PA_NIL;
}

static void entry_put_back(pa_store *s, uint32_t idx) {
    s->entries[idx].next_free = s->hdr->entry_free;
    s->hdr->entry_free = idx;
}

static uint32_t pin_take(pa_store *s) {
    pa_header *h = s->hdr;
    if (h->pin_free != PA_NIL) {
        uint32_t r = h->pin_free;
        h->pin_free = s->pins[r].next;
        return r;
    }
    if (h->pins_hwm < h->max_pins) return h->pins_hwm++;
    return PA_NIL;
}

static void pin_put_back(pa_store *s, uint32_t r) {
    s->pins[r].count = 0;
    s->pins[r].next = s->hdr->pin_free;
    s->hdr->pin_free = r;
}

void pa_entry_remove(pa_store *s, uint32_t idx) {
    pa_header *h = s->hdr;
    pa_entry *e = &s->entries[idx];
    if (e->state != PA_STATE_DELETED) {
        index_remove(s, idx, e->hash);
        h->object_count--;
    }
    pa_lru_remove(s, idx);
    uint32_t r = e->pin_head;
    e->pin_head = PA_NIL;
    __atomic_store_n(&e->state, PA_STATE_FREE, __ATOMIC_RELEASE); /* commit */
    if (e->pin_count) h->pinned_count--;
    e->pin_count = 0;
    e->gen++;
    while (r != PA_NIL) {
        uint32_t next = s->pins[r].next;
        pin_put_back(s, r);
        r = next;
    }
    pa_heap_free(s->base, &h->heap, e->offset);
    entry_put_back(s, idx);
}

/* Drops `count` pins of entry idx (already unlinked from its records). */
static void unpin(pa_store *s, uint32_t idx, uint32_t count) {
    pa_entry *e = &s->entries[idx];
    e->pin_count -= count;
    if (e->pin_count) return;
    s->hdr->pinned_count--;
    if (e->state == PA_STATE_DELETED) pa_entry_remove(s, idx);
    else pa_lru_update(s, idx);
}

/* ---- crash recovery ---- */

static int by_offset(const void *a, const void *b) {
    uint64_t x = ((const pa_live_block *)a)->offset, y = ((const pa_live_block *)b)->offset;
    return x < y ? -1 : x > y;
}

static int entry_shape_ok(pa_store *s, const pa_entry *e) {
    const pa_heap *heap = &s->hdr->heap;
    return e->offset >= heap->start && e->offset % PA_ALIGNMENT == 0 &&
           e->alloc_bytes == pa_alloc_bytes_for(e->size) && e->alloc_bytes <= heap->end - e->offset;
}

/* Drops entry i during repair (before the heap is rebuilt, so no block is freed here). */
static void repair_drop(pa_store *s, uint32_t i) {
    pa_entry *e = &s->entries[i];
    if (e->state == PA_STATE_CREATED || e->state == PA_STATE_SEALED) {
        index_remove(s, i, e->hash);
        s->hdr->object_count--;
    }
    e->state = PA_STATE_FREE;
}

/* Rebuilds every derived structure from the committed entries and their pin records. */
static void pa_repair(pa_store *s) {
    pa_header *h = s->hdr;
    if (h->entries_hwm > h->max_objects) h->entries_hwm = h->max_objects;
    if (h->pins_hwm > h->max_pins) h->pins_hwm = h->max_pins;
    uint32_t n = h->entries_hwm;
    h->client_count = 0;
    for (uint32_t c = 0; c < h->max_clients; c++) {
        if (s->clients[c].state == PA_CLIENT_USED) h->client_count++;
        else s->clients[c].state = PA_CLIENT_FREE;
    }

    /* 1. Entries with a malformed block go; the id index is rebuilt (a duplicate id goes too). */
    memset(s->index, 0, ((uint64_t)h->index_mask + 1u) * sizeof(uint64_t));
    h->object_count = 0;
    for (uint32_t i = 0; i < n; i++) {
        pa_entry *e = &s->entries[i];
        if (!pa_entry_live(e) || !entry_shape_ok(s, e)) {
            e->state = PA_STATE_FREE;
            continue;
        }
        if (e->state == PA_STATE_DELETED) continue;
        e->hash = hash_id((const char *)e->id);
        if (index_find(s, (const char *)e->id, e->hash) != PA_NIL) {
            e->state = PA_STATE_FREE;
            continue;
        }
        index_insert(s, i, e->hash);
        h->object_count++;
    }

    /* 2. Live blocks sorted by offset; an entry whose block overlaps the one below goes. */
    pa_live_block *live = malloc((n ? n : 1) * sizeof(pa_live_block));
    uint64_t k = 0;
    if (live) {
        for (uint32_t i = 0; i < n; i++)
            if (s->entries[i].state != PA_STATE_FREE)
                live[k++] = (pa_live_block){s->entries[i].offset, s->entries[i].alloc_bytes, i};
        qsort(live, k, sizeof(*live), by_offset);
        uint64_t end = h->heap.start;
        for (uint64_t j = 0; j < k; j++) {
            if (live[j].offset < end) repair_drop(s, live[j].entry);
            else end = live[j].offset + live[j].size;
        }
    } else { /* no memory to sort: keep nothing, which is consistent if lossy */
        for (uint32_t i = 0; i < n; i++) repair_drop(s, i);
    }

    /* 3. Pin records: keep the reachable ones with a count and a registered client. */
    uint8_t *seen = calloc(h->pins_hwm ? h->pins_hwm : 1, 1);
    h->pinned_count = 0;
    for (uint32_t i = 0; i < n; i++) {
        pa_entry *e = &s->entries[i];
        e->pin_count = 0;
        if (e->state == PA_STATE_FREE || !seen) e->pin_head = PA_NIL;
        uint32_t *link = &e->pin_head;
        while (*link != PA_NIL) {
            uint32_t r = *link;
            if (r >= h->pins_hwm || seen[r]) { /* a broken or cyclic chain ends here */
                *link = PA_NIL;
                break;
            }
            seen[r] = 1;
            pa_pin *p = &s->pins[r];
            if (p->count == 0 || p->client >= h->max_clients ||
                s->clients[p->client].state != PA_CLIENT_USED) {
                *link = p->next;
                seen[r] = 0;
                continue;
            }
            e->pin_count += p->count;
            link = &p->next;
        }
        if (e->pin_count) h->pinned_count++;
        else if (e->state == PA_STATE_DELETED) e->state = PA_STATE_FREE;
    }
    h->pin_free = PA_NIL;
    if (!seen) h->pins_hwm = 0; /* no pin survived */
    for (uint32_t r = h->pins_hwm; r-- > 0;)
        if (!seen[r]) pin_put_back(s, r);
    free(seen);

    /* 4. The heap, from the surviving blocks (still in offset order). */
    if (live) {
        uint64_t kept = 0;
        for (uint64_t j = 0; j < k; j++)
            if (s->entries[live[j].entry].state != PA_STATE_FREE) live[kept++] = live[j];
        pa_heap_rebuild(s->base, &h->heap, live, kept);
        free(live);
    } else {
        pa_heap_rebuild(s->base, &h->heap, NULL, 0);
    }

    /* 5. The entry free list and the LRU list. */
    h->entry_free = PA_NIL;
    for (uint32_t i = n; i-- > 0;) {
        pa_entry *e = &s->entries[i];
        if (e->state == PA_STATE_FREE) {
            e->pin_head = PA_NIL;
            e->pin_count = 0;
            e->gen++;
            entry_put_back(s, i);
        }
    }
    pa_lru_rebuild(s);
}

static int lock(pa_store *s) {
    if (s->detached) return PA_ERR_CLOSED;
    int r = pthread_mutex_lock(&s->hdr->mutex);
    if (r == 0) return PA_OK;
    if (r == EOWNERDEAD) { /* its owner died inside a critical section */
        pa_repair(s);
        s->hdr->recoveries++;
        pthread_mutex_consistent(&s->hdr->mutex);
        return PA_OK;
    }
    if (r == ENOTRECOVERABLE) return PA_ERR_CORRUPT;
    errno = r;
    return PA_ERR_SYS;
}

static inline void unlock(pa_store *s) { pthread_mutex_unlock(&s->hdr->mutex); }

int pa_lock(pa_store *s) { return lock(s); }
void pa_unlock(pa_store *s) { unlock(s); }

/* ---- clients ---- */

/* Reads the state letter and start time (field 22, clock ticks since boot) of a process. */
static int read_proc_stat(pid_t pid, char *state, uint64_t *start_time) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0) return -1;
    buf[len] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p || p[1] != ' ') return -1;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22; field++) { /* skip to field 22 */
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    *start_time = strtoull(p, NULL, 10);
    return 0;
}

static int client_is_dead(const pa_client *cl);
static void release_client_locked(pa_store *s, uint32_t c);

/* Takes free slot c for this process (under the lock). */
static void client_take(pa_store *s, uint32_t c, pid_t pid, uint64_t start_time) {
    pa_client *cl = &s->clients[c];
    cl->pid = pid;
    cl->start_time = start_time;
    cl->gen++;
    __atomic_store_n(&cl->state, PA_CLIENT_USED, __ATOMIC_RELEASE); /* commit */
    s->hdr->client_count++;
    s->client = c;
    s->client_gen = cl->gen;
}

static int client_register(pa_store *s) {
    pa_header *h = s->hdr;
    char st;
    uint64_t start_time = 0;
    pid_t pid = getpid();
    if (read_proc_stat(pid, &st, &start_time) != 0) start_time = 0;
    int rc = lock(s);
    if (rc) return rc;
    for (uint32_t c = 0; c < h->max_clients; c++) {
        if (s->clients[c].state != PA_CLIENT_FREE) continue;
        client_take(s, c, pid, start_time);
        unlock(s);
        return PA_OK;
    }
    /* Full: reclaim the slot of a client that died without detaching. Reaping finds those
       too, but many short-lived processes can fill the table between two reaps. */
    for (uint32_t c = 0; c < h->max_clients; c++) {
        if (s->clients[c].state != PA_CLIENT_USED || !client_is_dead(&s->clients[c])) continue;
        release_client_locked(s, c);
        client_take(s, c, pid, start_time);
        unlock(s);
        return PA_OK;
    }
    unlock(s);
    return PA_ERR_CLIENTS_FULL;
}

/* Drops every pin of client c, aborts the unsealed objects it created, frees its slot. */
static void release_client_locked(pa_store *s, uint32_t c) {
    pa_header *h = s->hdr;
    for (uint32_t i = 0; i < h->entries_hwm; i++) {
        pa_entry *e = &s->entries[i];
        if (!pa_entry_live(e)) continue;
        uint32_t dropped = 0;
        uint32_t *link = &e->pin_head;
        while (*link != PA_NIL) {
            uint32_t r = *link;
            if (s->pins[r].client == c) {
                dropped += s->pins[r].count;
                *link = s->pins[r].next;
                pin_put_back(s, r);
            } else {
                link = &s->pins[r].next;
            }
        }
        if (dropped) unpin(s, i, dropped);
        if (e->state == PA_STATE_CREATED && e->creator == c) pa_entry_remove(s, i);
    }
    if (s->clients[c].state == PA_CLIENT_USED) {
        __atomic_store_n(&s->clients[c].state, PA_CLIENT_FREE, __ATOMIC_RELEASE);
        h->client_count--;
    }
}

int pa_release_client(pa_store *s, uint32_t client_id) {
    if (client_id >= s->hdr->max_clients) return PA_ERR_INVALID;
    int rc = lock(s);
    if (rc) return rc;
    release_client_locked(s, client_id);
    unlock(s);
    return PA_OK;
}

static int client_is_dead(const pa_client *cl) {
    if (cl->pid <= 0) return 1;
    if (kill(cl->pid, 0) != 0 && errno == ESRCH) return 1;
    char st;
    uint64_t start_time;
    if (read_proc_stat(cl->pid, &st, &start_time) != 0) return 0; /* no /proc: trust kill() */
    if (st == 'Z' || st == 'X') return 1;                          /* exited, not yet waited */
    return cl->start_time && start_time != cl->start_time;         /* the pid was reused */
}

int pa_reap_dead_clients(pa_store *s, uint32_t *reaped) {
    pa_header *h = s->hdr;
    uint32_t count = 0;
    if (s->detached) return PA_ERR_CLOSED;
    for (uint32_t c = 0; c < h->max_clients; c++) {
        pa_client snap = s->clients[c];
        if (snap.state != PA_CLIENT_USED || c == s->client || !client_is_dead(&snap)) continue;
        int rc = lock(s);
        if (rc) return rc;
        if (s->clients[c].state == PA_CLIENT_USED && s->clients[c].gen == snap.gen) {
            release_client_locked(s, c);
            count++;
        }
        unlock(s);
    }
    if (reaped) *reaped = count;
    return PA_OK;
}

/* ---- segment lifecycle ---- */

static int name_ok(const char *name) {
    size_t len = name ? strlen(name) : 0;
    return len > strlen(NAME_PREFIX) && len < 200 && strncmp(name, NAME_PREFIX, strlen(NAME_PREFIX)) == 0 &&
           !strchr(name, '/');
}

static void shm_path(const char *name, char *path) { snprintf(path, 256, "/%s", name); }

static void bind_tables(pa_store *s) {
    pa_header *h = s->hdr;
    s->clients = (pa_client *)(s->base + h->clients_off);
    s->entries = (pa_entry *)(s->base + h->entries_off);
    s->index = (uint64_t *)(s->base + h->index_off);
    s->pins = (pa_pin *)(s->base + h->pins_off);
}

static pa_store *new_handle(uint8_t *base, uint64_t mapped) {
    pa_store *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->base = base;
    s->mapped_bytes = mapped;
    s->hdr = (pa_header *)base;
    s->client = PA_NIL;
    return s;
}

/* Ask for transparent huge pages on the mapping. A large put is a copy into these pages, and with
 * 4 KiB pages every 4 KiB of it costs a TLB miss (two-level page walks under a hypervisor):
 * measured on a 2-vCPU VM, the same streaming copy ran 7-18 % faster into huge-page memory.
 * Whether shared memory gets huge pages is the administrator's choice
 * (/sys/kernel/mm/transparent_hugepage/shmem_enabled: "advise" honours this, "never" and "deny"
 * ignore it, "always" and "within_size" need no advice), so a refusal is not an error. */
static void advise_huge_pages(uint8_t *base, uint64_t size) {
#ifdef MADV_HUGEPAGE
    int saved = errno;
    (void)madvise(base, size, MADV_HUGEPAGE);
    errno = saved;
#else
    (void)base, (void)size;
#endif
}

int pa_store_create(const char *name, uint64_t capacity_bytes, uint64_t max_objects,
                    pa_store **out) {
    *out = NULL;
    if (!name_ok(name)) return PA_ERR_INVALID;
    capacity_bytes = capacity_bytes / PA_ALIGNMENT * PA_ALIGNMENT;
    if (capacity_bytes < MIN_CAPACITY) return PA_ERR_INVALID;
    if (!max_objects) max_objects = pa_default_max_objects(capacity_bytes);
    if (max_objects > (1u << 26)) return PA_ERR_INVALID;
    if (max_objects < 16) max_objects = 16;
    uint64_t nbuckets = 1;
    while (nbuckets < 2 * max_objects) nbuckets <<= 1;
    uint64_t max_pins = 2 * max_objects + 1024;

    uint64_t off = round_up(sizeof(pa_header), PA_ALIGNMENT);
    uint64_t clients_off = off;
    off = round_up(off + PA_MAX_CLIENTS * sizeof(pa_client), PA_ALIGNMENT);
    uint64_t entries_off = off;
    off = round_up(off + max_objects * sizeof(pa_entry), PA_ALIGNMENT);
    uint64_t index_off = off;
    off = round_up(off + nbuckets * sizeof(uint64_t), PA_ALIGNMENT);
    uint64_t pins_off = off;
    off = round_up(off + max_pins * sizeof(pa_pin), PAGE);
    uint64_t heap_off = off, total = heap_off + round_up(capacity_bytes, PAGE);

    char path[256];
    shm_path(name, path);
    int fd = shm_open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return errno == EEXIST ? PA_ERR_SEGMENT_EXISTS : PA_ERR_SYS;
    if (ftruncate(fd, (off_t)total) != 0) { /* sparse: pages appear on first touch */
        int err = errno;
        close(fd);
        shm_unlink(path);
        errno = err;
        return PA_ERR_SYS;
    }
    uint8_t *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int err = errno;
    close(fd);
    if (base == MAP_FAILED) {
        shm_unlink(path);
        errno = err;
        return PA_ERR_SYS;
    }
    advise_huge_pages(base, total);
    pa_header *h = (pa_header *)base;
    h->version = PA_VERSION;
    h->header_bytes = sizeof(pa_header);
    h->total_bytes = total;
    h->clients_off = clients_off;
    h->entries_off = entries_off;
    h->index_off = index_off;
    h->pins_off = pins_off;
    h->max_clients = PA_MAX_CLIENTS;
    h->max_objects = (uint32_t)max_objects;
    h->index_mask = (uint32_t)(nbuckets - 1);
    h->max_pins = (uint32_t)max_pins;
    h->entry_free = h->pin_free = PA_NIL;
    h->lru_head = h->lru_tail = h->spill_head = h->spill_tail = PA_NIL;
    pa_heap_init(base, &h->heap, heap_off, heap_off + capacity_bytes);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc) {
        munmap(base, total);
        shm_unlink(path);
        errno = rc;
        return PA_ERR_SYS;
    }
    __atomic_store_n(&h->magic, PA_MAGIC, __ATOMIC_RELEASE); /* ready to attach */

    pa_store *s = new_handle(base, total);
    if (!s) {
        munmap(base, total);
        shm_unlink(path);
        errno = ENOMEM;
        return PA_ERR_SYS;
    }
    bind_tables(s);
    rc = client_register(s);
    if (rc) {
        munmap(base, total);
        free(s);
        shm_unlink(path);
        return rc;
    }
    *out = s;
    return PA_OK;
}

static int layout_ok(const pa_header *h, uint64_t size) {
    uint64_t nb = (uint64_t)h->index_mask + 1u;
    return h->total_bytes == size && h->header_bytes == sizeof(pa_header) &&
           h->max_clients == PA_MAX_CLIENTS && (nb & (nb - 1)) == 0 && nb >= 2ull * h->max_objects &&
           h->clients_off >= sizeof(pa_header) &&
           h->entries_off >= h->clients_off + (uint64_t)h->max_clients * sizeof(pa_client) &&
           h->index_off >= h->entries_off + (uint64_t)h->max_objects * sizeof(pa_entry) &&
           h->pins_off >= h->index_off + nb * sizeof(uint64_t) &&
           h->heap.start >= h->pins_off + (uint64_t)h->max_pins * sizeof(pa_pin) &&
           h->heap.start <= h->heap.end && h->heap.end <= size;
}

int pa_store_attach(const char *name, pa_store **out) {
    *out = NULL;
    if (!name_ok(name)) return PA_ERR_INVALID;
    char path[256];
    shm_path(name, path);
    int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return errno == ENOENT ? PA_ERR_NO_SEGMENT : PA_ERR_SYS;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return PA_ERR_SYS;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < sizeof(pa_header)) {
        close(fd);
        return PA_ERR_BAD_SEGMENT;
    }
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int err = errno;
    close(fd);
    if (base == MAP_FAILED) {
        errno = err;
        return PA_ERR_SYS;
    }
    advise_huge_pages(base, size);
    pa_header *h = (pa_header *)base;
    int rc = PA_OK;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != PA_MAGIC) rc = PA_ERR_BAD_SEGMENT;
    else if (h->version != PA_VERSION) rc = PA_ERR_VERSION;
    else if (!layout_ok(h, size)) rc = PA_ERR_BAD_SEGMENT;
    pa_store *s = rc ? NULL : new_handle(base, size);
    if (!rc && !s) rc = PA_ERR_SYS, errno = ENOMEM;
    if (!rc) {
        bind_tables(s);
        rc = client_register(s);
    }
    if (rc) {
        munmap(base, size);
        free(s);
        return rc;
    }
    *out = s;
    return PA_OK;
}

int pa_store_detach(pa_store *s) {
    if (!s || s->detached) return PA_OK;
    int rc = lock(s);
    if (rc) return rc;
    if (s->clients[s->client].gen == s->client_gen) release_client_locked(s, s->client);
    unlock(s);
    s->detached = 1;
    return PA_OK;
}

void pa_store_close(pa_store *s) {
    if (!s) return;
    pa_store_detach(s);
    munmap(s->base, s->mapped_bytes);
    free(s);
}

int pa_store_unlink(const char *name) {
    if (!name_ok(name)) return PA_ERR_INVALID;
    char path[256];
    shm_path(name, path);
    if (shm_unlink(path) != 0) return errno == ENOENT ? PA_ERR_NO_SEGMENT : PA_ERR_SYS;
    return PA_OK;
}

uint8_t *pa_base(pa_store *s) { return s->base; }
uint64_t pa_mapped_bytes(pa_store *s) { return s->mapped_bytes; }
uint32_t pa_client_id(pa_store *s) { return s->client; }

/* ---- objects ---- */

pa_new_object pa_create(pa_store *s, const char *id, uint64_t size_bytes, uint32_t flags) {
    pa_new_object res = {0};
    if (size_bytes > (1ULL << 62)) { /* before rounding up, which would overflow */
        res.code = PA_ERR_FULL;
        return res;
    }
    uint64_t need = pa_alloc_bytes_for(size_bytes);
    uint32_t hash = hash_id(id);
    int rc = lock(s);
    if (rc) {
        res.code = rc;
        return res;
    }
    pa_header *h = s->hdr;
    if (index_find(s, id, hash) != PA_NIL) {
        res.code = PA_ERR_EXISTS;
        goto out;
    }
    uint32_t idx = entry_take(s);
    if (idx == PA_NIL) {
        res.code = PA_ERR_TABLE_FULL;
        goto out;
    }
    uint64_t off = pa_heap_alloc(s->base, &h->heap, need, idx);
    if (!off) off = pa_evict_and_alloc(s, need, idx);
    if (!off) {
        entry_put_back(s, idx);
        res.code = PA_ERR_FULL;
        goto out;
    }
    pa_entry *e = &s->entries[idx];
    memcpy(e->id, id, PA_OBJECT_ID_SIZE);
    e->flags = flags & PA_FLAG_EVICTABLE;
    e->creator = s->client;
    e->pin_count = 0;
    e->pin_head = PA_NIL;
    e->lru_prev = e->lru_next = PA_NIL;
    e->list = PA_LIST_NONE;
    e->hash = hash;
    e->offset = off;
    e->size = size_bytes;
    e->alloc_bytes = need; /* the allocator hands out exactly what is asked */
    e->last_use = ++h->clock;
    __atomic_store_n(&e->state, PA_STATE_CREATED, __ATOMIC_RELEASE); /* commit */
    index_insert(s, idx, hash);
    h->object_count++;
    res.offset = off + PA_BLOCK_HEADER;
    res.data = s->base + res.offset;
out:
    unlock(s);
    return res;
}

/* Looks up an indexed entry under the lock; PA_NIL if absent. */
static inline uint32_t find(pa_store *s, const char *id) { return index_find(s, id, hash_id(id)); }

int pa_seal(pa_store *s, const char *id) {
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx = find(s, id);
    if (idx == PA_NIL) rc = PA_ERR_NOT_FOUND;
    else if (s->entries[idx].state != PA_STATE_CREATED) rc = PA_ERR_SEALED;
    else {
        __atomic_store_n(&s->entries[idx].state, PA_STATE_SEALED, __ATOMIC_RELEASE);
        pa_lru_update(s, idx);
    }
    unlock(s);
    return rc;
}

int pa_abort(pa_store *s, const char *id) {
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx = find(s, id);
    if (idx == PA_NIL) rc = PA_ERR_NOT_FOUND;
    else if (s->entries[idx].state != PA_STATE_CREATED) rc = PA_ERR_SEALED;
    else pa_entry_remove(s, idx);
    unlock(s);
    return rc;
}

pa_view pa_get(pa_store *s, const char *id) {
    pa_view v = {0};
    uint32_t hash = hash_id(id);
    int rc = lock(s);
    if (rc) {
        v.code = rc;
        return v;
    }
    uint32_t idx = index_find(s, id, hash);
    if (idx == PA_NIL) {
        v.code = PA_ERR_NOT_FOUND;
        goto out;
    }
    pa_entry *e = &s->entries[idx];
    if (e->state != PA_STATE_SEALED) {
        v.code = PA_ERR_NOT_SEALED;
        goto out;
    }
    uint32_t r = e->pin_head;
    while (r != PA_NIL && s->pins[r].client != s->client) r = s->pins[r].next;
    if (r != PA_NIL) {
        s->pins[r].count++;
    } else {
        r = pin_take(s);
        if (r == PA_NIL) {
            v.code = PA_ERR_PINS_FULL;
            goto out;
        }
        s->pins[r].client = s->client;
        s->pins[r].count = 1;
        s->pins[r].next = e->pin_head;
        e->pin_head = r; /* commit */
    }
    if (e->pin_count++ == 0) {
        s->hdr->pinned_count++;
        pa_lru_remove(s, idx);
    }
    v.handle = ((uint64_t)e->gen << 32) | idx;
    v.size = e->size;
    v.data = s->base + e->offset + PA_BLOCK_HEADER;
out:
    unlock(s);
    return v;
}

/* Under the lock: drops one of this client's pins of the entry a handle names (its count not
 * yet updated: the caller then calls unpin). Sets *idx_out. */
static int drop_own_pin(pa_store *s, uint64_t handle, uint32_t *idx_out) {
    uint32_t idx = (uint32_t)handle, gen = (uint32_t)(handle >> 32);
    pa_entry *e = &s->entries[idx];
    if (idx >= s->hdr->entries_hwm || !pa_entry_live(e) || e->gen != gen) return PA_ERR_NOT_FOUND;
    uint32_t *link = &e->pin_head;
    while (*link != PA_NIL && s->pins[*link].client != s->client) link = &s->pins[*link].next;
    if (*link == PA_NIL) return PA_ERR_NOT_PINNED;
    uint32_t r = *link;
    if (--s->pins[r].count == 0) {
        *link = s->pins[r].next;
        pin_put_back(s, r);
    }
    *idx_out = idx;
    return PA_OK;
}

int pa_release(pa_store *s, uint64_t handle, void *unused) {
    (void)unused;
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx;
    rc = drop_own_pin(s, handle, &idx);
    if (rc == PA_OK) unpin(s, idx, 1);
    unlock(s);
    return rc;
}

int pa_spill_done(pa_store *s, uint64_t handle) {
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx;
    rc = drop_own_pin(s, handle, &idx);
    if (rc == PA_OK) {
        pa_entry *e = &s->entries[idx];
        if (e->state == PA_STATE_DELETED) rc = PA_ERR_NOT_FOUND; /* its owner deleted it meanwhile */
        else if (e->pin_count > 1) rc = PA_ERR_BUSY;          /* someone else reads it */
        unpin(s, idx, 1);                                     /* frees a DELETED entry at the last */
        if (rc == PA_OK) pa_entry_remove(s, idx);
    }
    unlock(s);
    return rc;
}

int pa_delete(pa_store *s, const char *id) {
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx = find(s, id);
    if (idx == PA_NIL) {
        rc = PA_ERR_NOT_FOUND;
    } else if (s->entries[idx].state != PA_STATE_SEALED) {
        rc = PA_ERR_NOT_SEALED;
    } else if (s->entries[idx].pin_count) { /* free at the last release */
        pa_entry *e = &s->entries[idx];
        index_remove(s, idx, e->hash);
        pa_lru_remove(s, idx);
        __atomic_store_n(&e->state, PA_STATE_DELETED, __ATOMIC_RELEASE);
        s->hdr->object_count--;
    } else {
        pa_entry_remove(s, idx);
    }
    unlock(s);
    return rc;
}

int pa_contains(pa_store *s, const char *id) {
    int rc = lock(s);
    if (rc) return -rc;
    uint32_t idx = find(s, id);
    int found = idx != PA_NIL && s->entries[idx].state == PA_STATE_SEALED;
    unlock(s);
    return found;
}

int pa_set_evictable(pa_store *s, const char *id, int evictable) {
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx = find(s, id);
    if (idx == PA_NIL) {
        rc = PA_ERR_NOT_FOUND;
    } else {
        pa_entry *e = &s->entries[idx];
        e->flags = evictable ? (e->flags | PA_FLAG_EVICTABLE) : (e->flags & ~PA_FLAG_EVICTABLE);
        pa_lru_update(s, idx);
    }
    unlock(s);
    return rc;
}

int pa_stats_get(pa_store *s, pa_stats *out) {
    int rc = lock(s);
    if (rc) return rc;
    pa_header *h = s->hdr;
    out->capacity_bytes = h->heap.end - h->heap.start;
    out->used_bytes = h->heap.used_bytes;
    out->free_bytes = out->capacity_bytes - out->used_bytes;
    out->largest_free_bytes = pa_heap_largest_free(s->base, &h->heap);
    out->object_count = h->object_count;
    out->pinned_count = h->pinned_count;
    out->evictions = h->evictions;
    out->evicted_bytes = h->evicted_bytes;
    out->client_count = h->client_count;
    out->max_objects = h->max_objects;
    out->recoveries = h->recoveries;
    out->spillable_bytes = h->spill_bytes;
    unlock(s);
    return PA_OK;
}

const char *pa_strerror(int code) {
    switch (code) {
    case PA_OK: return "ok";
    case PA_ERR_NOT_FOUND: return "no object with that id";
    case PA_ERR_EXISTS: return "an object with that id already exists";
    case PA_ERR_NOT_SEALED: return "the object is not sealed yet";
    case PA_ERR_SEALED: return "the object is already sealed";
    case PA_ERR_FULL: return "the object store is full";
    case PA_ERR_TABLE_FULL: return "the object table is full";
    case PA_ERR_PINS_FULL: return "the pin table is full";
    case PA_ERR_CLIENTS_FULL: return "the client table is full";
    case PA_ERR_BAD_SEGMENT: return "not a pyactor object store segment";
    case PA_ERR_VERSION: return "the segment was made by another store version";
    case PA_ERR_SEGMENT_EXISTS: return "a segment with that name already exists";
    case PA_ERR_NO_SEGMENT: return "no segment with that name";
    case PA_ERR_SYS: return "a system call failed";
    case PA_ERR_INVALID: return "invalid argument";
    case PA_ERR_NOT_PINNED: return "this client holds no pin on the object";
    case PA_ERR_CLOSED: return "the store handle is closed";
    case PA_ERR_CORRUPT: return "the store is corrupt";
    case PA_ERR_BUSY: return "another client pins the object";
    default: return "unknown error";
    }
}

/* ---- debug hooks ---- */

#define FAIL(...)                                                             \
    do {                                                                      \
        if (message && message_size) snprintf(message, message_size, __VA_ARGS__); \
        rc = PA_ERR_CORRUPT;                                                  \
        goto out;                                                             \
    } while (0)

int pa_debug_check(pa_store *s, char *message, uint64_t message_size) {
    int rc = lock(s);
    if (rc) return rc;
    pa_header *h = s->hdr;
    if (message && message_size) message[0] = 0;
    rc = pa_heap_check(s->base, &h->heap, message, message_size);
    if (rc) goto out;
    uint64_t used = 0, objects = 0, pinned = 0, eligible = 0, spillable = 0, indexed = 0;
    for (uint32_t i = 0; i < h->entries_hwm; i++) {
        pa_entry *e = &s->entries[i];
        if (!pa_entry_live(e)) continue;
        pa_block *b = pa_block_at(s->base, e->offset);
        if (!entry_shape_ok(s, e) || b->magic != PA_BLOCK_MAGIC || (b->flags & PA_BLOCK_FREE) ||
            b->entry != i || b->size != e->alloc_bytes)
            FAIL("entry %u: its block at %llu does not match", i, (unsigned long long)e->offset);
        used += e->alloc_bytes;
        uint32_t found = index_find(s, (const char *)e->id, e->hash);
        if (e->state == PA_STATE_DELETED) {
            if (found == i) FAIL("entry %u: deleted but still indexed", i);
            if (!e->pin_count) FAIL("entry %u: deleted, unpinned, not freed", i);
        } else {
            if (found != i) FAIL("entry %u: live but not indexed", i);
            objects++;
        }
        uint64_t pins = 0;
        for (uint32_t r = e->pin_head, steps = 0; r != PA_NIL; r = s->pins[r].next) {
            if (r >= h->pins_hwm || ++steps > h->max_clients) FAIL("entry %u: broken pin list", i);
            if (!s->pins[r].count) FAIL("entry %u: pin record with count 0", i);
            pins += s->pins[r].count;
        }
        if (pins != e->pin_count) FAIL("entry %u: pin_count %u, records say %llu", i, e->pin_count,
                                       (unsigned long long)pins);
        if (pins) pinned++;
        if (pa_list_for(e) == PA_LIST_EVICT) eligible++;
        if (pa_list_for(e) == PA_LIST_SPILL) spillable++;
        if (e->list != pa_list_for(e)) FAIL("entry %u filed in list %u, belongs in %u", i, e->list,
                                            pa_list_for(e));
    }
    if (used != h->heap.used_bytes) FAIL("entries hold %llu bytes, heap says %llu",
                                         (unsigned long long)used, (unsigned long long)h->heap.used_bytes);
    if (objects != h->object_count) FAIL("object_count %llu, entries say %llu",
                                         (unsigned long long)h->object_count, (unsigned long long)objects);
    if (pinned != h->pinned_count) FAIL("pinned_count %llu, entries say %llu",
                                        (unsigned long long)h->pinned_count, (unsigned long long)pinned);
    for (uint64_t pos = 0; pos <= h->index_mask; pos++)
        if (s->index[pos]) indexed++;
    if (indexed != objects) FAIL("%llu index buckets for %llu objects", (unsigned long long)indexed,
                                 (unsigned long long)objects);
    const struct { uint32_t head; uint64_t bytes, members; uint32_t list; const char *name; } lists[2] = {
        {h->lru_head, h->lru_bytes, eligible, PA_LIST_EVICT, "LRU"},
        {h->spill_head, h->spill_bytes, spillable, PA_LIST_SPILL, "spill"}};
    for (int l = 0; l < 2; l++) {
        uint64_t listed = 0, list_bytes = 0, last = 0;
        for (uint32_t i = lists[l].head, prev = PA_NIL; i != PA_NIL; prev = i, i = s->entries[i].lru_next) {
            pa_entry *e = &s->entries[i];
            if (++listed > lists[l].members) FAIL("%s list longer than its eligible objects", lists[l].name);
            if (pa_list_for(e) != lists[l].list) FAIL("entry %u in the %s list but not eligible", i, lists[l].name);
            if (e->lru_prev != prev) FAIL("entry %u: broken %s back link", i, lists[l].name);
            if (e->last_use < last) FAIL("%s list out of order at entry %u", lists[l].name, i);
            last = e->last_use;
            list_bytes += e->alloc_bytes;
        }
        if (listed != lists[l].members) FAIL("%llu objects eligible for the %s list, %llu in it",
                                             (unsigned long long)lists[l].members, lists[l].name,
                                             (unsigned long long)listed);
        if (list_bytes != lists[l].bytes) FAIL("%s list bytes %llu, list holds %llu", lists[l].name,
                                               (unsigned long long)lists[l].bytes, (unsigned long long)list_bytes);
    }
out:
    unlock(s);
    return rc;
}

int pa_debug_lock(pa_store *s) { return lock(s); }

int pa_debug_tear(pa_store *s, int how) {
    int rc = lock(s);
    if (rc) return rc;
    pa_header *h = s->hdr;
    switch (how) {
    case 0:
        pa_heap_alloc(s->base, &h->heap, 4096, PA_NIL);
        break;
    case 1:
        memset(h->heap.free_heads, 0, sizeof(h->heap.free_heads));
        memset(h->heap.bitmap, 0, sizeof(h->heap.bitmap));
        break;
    case 2:
        h->object_count += 5;
        h->pinned_count += 3;
        h->lru_head = h->lru_tail = h->spill_head = h->spill_tail = PA_NIL;
        h->lru_bytes = h->spill_bytes = 12345;
        break;
    case 3: {
        uint32_t idx = entry_take(s);
        if (idx == PA_NIL) break;
        uint64_t off = pa_heap_alloc(s->base, &h->heap, 128, idx);
        memset(s->entries[idx].id, 0xAB, PA_OBJECT_ID_SIZE);
        s->entries[idx].offset = off;
        s->entries[idx].size = 64;
        s->entries[idx].alloc_bytes = 128;
        break;
    }
    default:
        return PA_ERR_INVALID;
    }
    return PA_OK; /* still holding the lock */
}

int pa_debug_object_info(pa_store *s, const char *id, pa_object_info *out) {
    int rc = lock(s);
    if (rc) return rc;
    uint32_t idx = find(s, id);
    if (idx == PA_NIL) {
        rc = PA_ERR_NOT_FOUND;
    } else {
        pa_entry *e = &s->entries[idx];
        out->state = e->state;
        out->flags = e->flags;
        out->pin_count = e->pin_count;
        out->creator_client = e->creator;
        out->offset = e->offset + PA_BLOCK_HEADER;
        out->size = e->size;
        out->alloc_bytes = e->alloc_bytes;
    }
    unlock(s);
    return rc;
}

static int32_t client_pid(pa_store *s, uint32_t c) {
    if (c >= s->hdr->max_clients || s->clients[c].state != PA_CLIENT_USED) return 0;
    return s->clients[c].pid;
}

static void list_row(pa_store *s, pa_listed *row, const pa_entry *e, int32_t pin_pid,
                     uint32_t pins) {
    memcpy(row->id, e->id, PA_OBJECT_ID_SIZE);
    row->state = e->state;
    row->flags = e->flags;
    row->pin_count = e->pin_count;
    row->creator_pid = pin_pid == -1 ? client_pid(s, e->creator) : 0;
    row->size = e->size;
    row->alloc_bytes = e->alloc_bytes;
    row->pin_pid = pin_pid;
    row->pins = pins;
}

int pa_list_objects(pa_store *s, pa_listed *out, uint64_t max, uint64_t *count) {
    int rc = lock(s);
    if (rc) return rc;
    pa_header *h = s->hdr;
    uint64_t n = 0;
    for (uint32_t i = 0; i < h->entries_hwm; i++) {
        pa_entry *e = &s->entries[i];
        if (!pa_entry_live(e)) continue;
        if (n < max) list_row(s, &out[n], e, -1, 0);
        n++;
        for (uint32_t r = e->pin_head; r != PA_NIL && r < h->pins_hwm; r = s->pins[r].next) {
            if (n < max) list_row(s, &out[n], e, client_pid(s, s->pins[r].client),
                                  s->pins[r].count);
            n++;
        }
    }
    unlock(s);
    *count = n;
    return 0;
}

int pa_debug_dump_heap(pa_store *s, char *out, uint64_t out_size) {
    int rc = lock(s);
    if (rc) return rc;
    rc = pa_heap_dump(s->base, &s->hdr->heap, out, out_size);
    unlock(s);
    return rc;
}
