/* Eviction and spilling candidates: two LRU lists over the same links.
 *
 * The store may drop (evict) sealed objects that their owner marked evictable (secondary copies
 * pulled from another node) when nobody pins them; those are in the EVICT list. Sealed, unpinned
 * objects that are not evictable (primary copies: the only one) are in the SPILL list, which the
 * store never acts on itself: the node reads its head (pa_spill_candidates) to choose what to
 * write to disk. pa_lru_update re-files an entry whenever its state, pins or flags change, so an
 * entry is in at most one list, and `list` says which. An object joins a tail (most recently
 * used) when it is sealed or when its last pin is released, so each head is the least recently
 * used. Links are entry indices; each entry also keeps its LRU clock value so pa_lru_rebuild can
 * restore both orders after a crash.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int pa_lru_eligible(const pa_entry *e) {
    return e->state == PA_STATE_SEALED && (e->flags & PA_FLAG_EVICTABLE) && e->pin_count == 0;
}

uint32_t pa_list_for(const pa_entry *e) {
    if (e->state != PA_STATE_SEALED || e->pin_count != 0) return PA_LIST_NONE;
    return (e->flags & PA_FLAG_EVICTABLE) ? PA_LIST_EVICT : PA_LIST_SPILL;
}

typedef struct {
    uint32_t *head, *tail;
    uint64_t *bytes;
} list_ref;

static inline list_ref list_of(pa_header *h, uint32_t list) {
    if (list == PA_LIST_SPILL) return (list_ref){&h->spill_head, &h->spill_tail, &h->spill_bytes};
    return (list_ref){&h->lru_head, &h->lru_tail, &h->lru_bytes};
}

static void push_to(pa_store *s, uint32_t idx, uint32_t list) {
    pa_header *h = s->hdr;
    pa_entry *e = &s->entries[idx];
    list_ref l = list_of(h, list);
    e->last_use = ++h->clock;
    e->lru_next = PA_NIL;
    e->lru_prev = *l.tail;
    if (*l.tail != PA_NIL) s->entries[*l.tail].lru_next = idx;
    else *l.head = idx;
    *l.tail = idx;
    *l.bytes += e->alloc_bytes;
    e->list = list;
}

void pa_lru_push(pa_store *s, uint32_t idx) {
    uint32_t list = pa_list_for(&s->entries[idx]);
    if (list != PA_LIST_NONE) push_to(s, idx, list);
}

void pa_lru_remove(pa_store *s, uint32_t idx) {
    pa_entry *e = &s->entries[idx];
    if (e->list == PA_LIST_NONE) return;
    list_ref l = list_of(s->hdr, e->list);
    if (e->lru_prev != PA_NIL) s->entries[e->lru_prev].lru_next = e->lru_next;
    else *l.head = e->lru_next;
    if (e->lru_next != PA_NIL) s->entries[e->lru_next].lru_prev = e->lru_prev;
    else *l.tail = e->lru_prev;
    e->lru_prev = e->lru_next = PA_NIL;
    *l.bytes -= e->alloc_bytes;
    e->list = PA_LIST_NONE;
}

void pa_lru_update(pa_store *s, uint32_t idx) {
    pa_entry *e = &s->entries[idx];
    uint32_t want = pa_list_for(e);
    if (e->list == want) return;
    pa_lru_remove(s, idx);
    if (want != PA_LIST_NONE) push_to(s, idx, want);
}

static int by_last_use(const void *a, const void *b) {
    uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
    return x < y ? -1 : x > y;
}

/* Appends idx at the tail of its list without advancing its recorded recency. */
static void push_keeping_last_use(pa_store *s, uint32_t idx) {
    uint64_t last_use = s->entries[idx].last_use, clock = s->hdr->clock;
    pa_lru_push(s, idx);
    s->entries[idx].last_use = last_use;
    s->hdr->clock = clock;
}

void pa_lru_rebuild(pa_store *s) {
    pa_header *h = s->hdr;
    h->lru_head = h->lru_tail = h->spill_head = h->spill_tail = PA_NIL;
    h->lru_bytes = h->spill_bytes = 0;
    uint64_t n = 0;
    for (uint32_t i = 0; i < h->entries_hwm; i++) {
        pa_entry *e = &s->entries[i];
        e->lru_prev = e->lru_next = PA_NIL;
        e->list = PA_LIST_NONE;
        if (pa_entry_live(e) && pa_list_for(e) != PA_LIST_NONE) n++;
        if (e->last_use > h->clock) h->clock = e->last_use;
    }
    if (!n) return;
    uint64_t *order = malloc(n * 2 * sizeof(uint64_t)); /* (last_use, index) pairs */
    if (!order) { /* no memory to sort: index order is still a valid list */
        for (uint32_t i = 0; i < h->entries_hwm; i++)
            if (pa_entry_live(&s->entries[i])) push_keeping_last_use(s, i);
        return;
    }
    uint64_t k = 0;
    for (uint32_t i = 0; i < h->entries_hwm; i++)
        if (pa_entry_live(&s->entries[i]) && pa_list_for(&s->entries[i]) != PA_LIST_NONE) {
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

int pa_spill_candidates(pa_store *s, uint64_t need_bytes, char *ids_out, uint64_t max_ids,
                        uint64_t *count_out) {
    *count_out = 0;
    if (max_ids == 0) return PA_ERR_INVALID;
    int rc = pa_lock(s);
    if (rc) return rc;
    uint64_t got = 0, bytes = 0;
    for (uint32_t i = s->hdr->spill_head; i != PA_NIL && got < max_ids && bytes < need_bytes;
         i = s->entries[i].lru_next) {
        memcpy(ids_out + got * PA_OBJECT_ID_SIZE, s->entries[i].id, PA_OBJECT_ID_SIZE);
        bytes += s->entries[i].alloc_bytes;
        got++;
    }
    *count_out = got;
    pa_unlock(s);
    return PA_OK;
}
