/* Eviction: an LRU list of the objects the store may drop when it is full.
 *
 * Only sealed objects that their owner marked evictable and that nobody pins are in the list;
 * pa_lru_update re-files an entry whenever one of those three facts changes. An object joins at
 * the tail (most recently used) when it is sealed or when its last pin is released, so the head is
 * the least recently used. Links are entry indices; each entry also keeps its LRU clock value so
 * pa_lru_rebuild can restore the order after a crash.
 */
#include <stdlib.h>

#include "internal.h"

int pa_lru_eligible(const pa_entry *e) {
    return e->state == PA_STATE_SEALED && (e->flags & PA_FLAG_EVICTABLE) && e->pin_count == 0;
}

static inline int in_list(pa_store *s, uint32_t idx) {
    const pa_entry *e = &s->entries[idx];
    return e->lru_prev != PA_NIL || s->hdr->lru_head == idx;
}

void pa_lru_push(pa_store *s, uint32_t idx) {
    pa_header *h = s->hdr;
    pa_entry *e = &s->entries[idx];
    e->last_use = ++h->clock;
    e->lru_next = PA_NIL;
    e->lru_prev = h->lru_tail;
    if (h->lru_tail != PA_NIL) s->entries[h->lru_tail].lru_next = idx;
    else h->lru_head = idx;
    h->lru_tail = idx;
    h->lru_bytes += e->alloc_bytes;
}

void pa_lru_remove(pa_store *s, uint32_t idx) {
    pa_header *h = s->hdr;
    pa_entry *e = &s->entries[idx];
    if (!in_list(s, idx)) return;
    if (e->lru_prev != PA_NIL) s->entries[e->lru_prev].lru_next = e->lru_next;
    else h->lru_head = e->lru_next;
    if (e->lru_next != PA_NIL) s->entries[e->lru_next].lru_prev = e->lru_prev;
    else h->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = PA_NIL;
    h->lru_bytes -= e->alloc_bytes;
}

void pa_lru_update(pa_store *s, uint32_t idx) {
    int listed = in_list(s, idx);
    int eligible = pa_lru_eligible(&s->entries[idx]);
    if (listed && !eligible) pa_lru_remove(s, idx);
    else if (!listed && eligible) pa_lru_push(s, idx);
}

static int by_last_use(const void *a, const void *b) {
    uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
    return x < y ? -1 : x > y;
}

/* Appends idx at the tail without advancing its recorded recency. */
static void push_keeping_last_use(pa_store *s, uint32_t idx) {
    uint64_t last_use = s->entries[idx].last_use, clock = s->hdr->clock;
    pa_lru_push(s, idx);
    s->entries[idx].last_use = last_use;
    s->hdr->clock = clock;
}

void pa_lru_rebuild(pa_store *s) {
    pa_header *h = s->hdr;
    h->lru_head = h->lru_tail = PA_NIL;
    h->lru_bytes = 0;
    uint64_t n = 0;
    for (uint32_t i = 0; i < h->entries_hwm; i++) {
        s->entries[i].lru_prev = s->entries[i].lru_next = PA_NIL;
        if (pa_lru_eligible(&s->entries[i])) n++;
        if (s->entries[i].last_use > h->clock) h->clock = s->entries[i].last_use;
    }
    if (!n) return;
    uint64_t *order = malloc(n * 2 * sizeof(uint64_t)); /* (last_use, index) pairs */
    if (!order) { /* no memory to sort: index order is still a valid list */
        for (uint32_t i = 0; i < h->entries_hwm; i++)
            if (pa_lru_eligible(&s->entries[i])) push_keeping_last_use(s, i);
        return;
    }
    uint64_t k = 0;
    for (uint32_t i = 0; i < h->entries_hwm; i++)
        if (pa_lru_eligible(&s->entries[i])) {
            order[2 * k] = s->entries[i].last_use;
            order[2 * k + 1] = i;
            k++;
        }
    qsort(order, n, 2 * sizeof(uint64_t), by_last_use);
    for (uint64_t j = 0; j < n; j++) push_keeping_last_use(s, (uint32_t)order[2 * j + 1]);
    free(order);
}

uint64_t pa_evict_and_alloc(pa_store *s, uint64_t need, uint32_t entry) {
    pa_header *h = s->hdr;
    uint64_t heap_bytes = h->heap.end - h->heap.start;
    /* Evicting cannot help when even all evictable bytes plus free space fall short. */
    if (need > heap_bytes || need > (heap_bytes - h->heap.used_bytes) + h->lru_bytes) return 0;
    while (h->lru_head != PA_NIL) {
        uint32_t victim = h->lru_head;
        h->evictions++;
        h->evicted_bytes += s->entries[victim].alloc_bytes;
        pa_entry_remove(s, victim);
        uint64_t off = pa_heap_alloc(s->base, &h->heap, need, entry);
        if (off) return off;
    }
    return 0;
}
