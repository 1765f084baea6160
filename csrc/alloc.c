/* Allocator over the shared heap: boundary tags + segregated free lists (TLSF-like size classes).
 *
 * Every block (free or allocated) starts with a 64-byte pa_block header holding its size and the
 * size of the block below it, so a freed block finds both neighbours in O(1) and merges with any
 * that is free: two free blocks are never adjacent. Free blocks sit in doubly linked lists, one per
 * size class (16 exact classes for 1..15 units of 64 bytes, then 8 sub-classes per power of two), and
 * a bitmap of non-empty classes finds the next class with a block in a few word scans. A request
 * first-fits inside its own class, else takes the head of the next non-empty class (every block
 * there is large enough) and splits off the tail. All links are segment offsets.
 *
 * Nothing here is crash-safe on its own: pa_heap_rebuild recreates the tags and lists from the
 * object table after a process died holding the lock (see internal.h).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static inline uint32_t bin_of(uint64_t size) {
    uint64_t units = size / PA_ALIGNMENT;
    if (units < PA_SMALL_BINS) return (uint32_t)units;
    uint32_t fl = 63u - (uint32_t)__builtin_clzll(units);
    uint32_t sl = (uint32_t)(units >> (fl - PA_SUB_BITS)) & ((1u << PA_SUB_BITS) - 1u);
    return PA_SMALL_BINS + (fl - 4u) * (1u << PA_SUB_BITS) + sl;
}

static inline void bitmap_set(pa_heap *h, uint32_t bin) { h->bitmap[bin / 64] |= 1ULL << (bin % 64); }
static inline void bitmap_clear(pa_heap *h, uint32_t bin) {
    h->bitmap[bin / 64] &= ~(1ULL << (bin % 64));
}

/* First non-empty bin >= bin, or PA_NBINS. */
static uint32_t next_nonempty(const pa_heap *h, uint32_t bin) {
    uint32_t word = bin / 64;
    if (word >= PA_BITMAP_WORDS) return PA_NBINS;
    uint64_t bits = h->bitmap[word] & (~0ULL << (bin % 64));
    for (;;) {
        if (bits) return word * 64 + (uint32_t)__builtin_ctzll(bits);
        if (++word >= PA_BITMAP_WORDS) return PA_NBINS;
        bits = h->bitmap[word];
    }
}

static void list_insert(uint8_t *base, pa_heap *h, uint64_t off) {
    pa_block *b = pa_block_at(base, off);
    uint32_t bin = bin_of(b->size);
    b->flags = PA_BLOCK_FREE;
    b->prev_free = 0;
    b->next_free = h->free_heads[bin];
    if (b->next_free) pa_block_at(base, b->next_free)->prev_free = off;
    h->free_heads[bin] = off;
    bitmap_set(h, bin);
}

static void list_remove(uint8_t *base, pa_heap *h, uint64_t off) {
    pa_block *b = pa_block_at(base, off);
    uint32_t bin = bin_of(b->size);
    if (b->prev_free) pa_block_at(base, b->prev_free)->next_free = b->next_free;
    else h->free_heads[bin] = b->next_free;
    if (b->next_free) pa_block_at(base, b->next_free)->prev_free = b->prev_free;
    if (!h->free_heads[bin]) bitmap_clear(h, bin);
    b->next_free = b->prev_free = 0;
}

static inline void write_tag(uint8_t *base, uint64_t off, uint64_t size, uint64_t prev_size) {
    pa_block *b = pa_block_at(base, off);
    b->size = size;
    b->prev_size = prev_size;
    b->magic = PA_BLOCK_MAGIC;
    b->flags = 0;
    b->entry = PA_NIL;
    b->next_free = b->prev_free = 0;
}

static inline void set_next_prev_size(uint8_t *base, const pa_heap *h, uint64_t off, uint64_t size) {
    if (off + size < h->end) pa_block_at(base, off + size)->prev_size = size;
}

void pa_heap_init(uint8_t *base, pa_heap *h, uint64_t start, uint64_t end) {
    memset(h, 0, sizeof(*h));
    h->start = start;
    h->end = end;
    write_tag(base, start, end - start, 0);
    list_insert(base, h, start);
}

uint64_t pa_heap_alloc(uint8_t *base, pa_heap *h, uint64_t need, uint32_t entry) {
    if (need == 0 || need > h->end - h->start) return 0;
    uint32_t bin = bin_of(need);
    uint64_t found = 0;
    if (h->bitmap[bin / 64] & (1ULL << (bin % 64))) {
        for (uint64_t off = h->free_heads[bin]; off; off = pa_block_at(base, off)->next_free) {
            if (pa_block_at(base, off)->size >= need) {
                found = off;
                break;
            }
        }
    }
    if (!found) {
        uint32_t next = next_nonempty(h, bin + 1);
        if (next >= PA_NBINS) return 0;
        found = h->free_heads[next];
    }
    list_remove(base, h, found);
    pa_block *b = pa_block_at(base, found);
    uint64_t size = b->size;
    if (size - need >= PA_BLOCK_HEADER) {
        uint64_t rest = found + need;
        write_tag(base, rest, size - need, need);
        set_next_prev_size(base, h, rest, size - need);
        list_insert(base, h, rest);
        b->size = size = need;
    }
    b->flags = 0;
    b->entry = entry;
    h->used_bytes += size;
    return found;
}

void pa_heap_free(uint8_t *base, pa_heap *h, uint64_t off) {
    pa_block *b = pa_block_at(base, off);
    uint64_t size = b->size;
    h->used_bytes -= size;
    b->entry = PA_NIL;
    uint64_t next = off + size;
    if (next < h->end && (pa_block_at(base, next)->flags & PA_BLOCK_FREE)) {
        list_remove(base, h, next);
        size += pa_block_at(base, next)->size;
        pa_block_at(base, next)->magic = 0;
    }
    if (b->prev_size) {
        uint64_t prev = off - b->prev_size;
        if (pa_block_at(base, prev)->flags & PA_BLOCK_FREE) {
            list_remove(base, h, prev);
            size += pa_block_at(base, prev)->size;
            b->magic = 0;
            off = prev;
            b = pa_block_at(base, off);
        }
    }
    b->size = size;
    set_next_prev_size(base, h, off, size);
    list_insert(base, h, off);
}

uint64_t pa_heap_largest_free(uint8_t *base, const pa_heap *h) {
    for (int w = PA_BITMAP_WORDS - 1; w >= 0; w--) {
        if (!h->bitmap[w]) continue;
        uint32_t bin = (uint32_t)w * 64 + 63u - (uint32_t)__builtin_clzll(h->bitmap[w]);
        uint64_t best = 0;
        for (uint64_t off = h->free_heads[bin]; off; off = pa_block_at(base, off)->next_free)
            if (pa_block_at(base, off)->size > best) best = pa_block_at(base, off)->size;
        return best;
    }
    return 0;
}

void pa_heap_rebuild(uint8_t *base, pa_heap *h, const pa_live_block *live, uint64_t n) {
    memset(h->free_heads, 0, sizeof(h->free_heads));
    memset(h->bitmap, 0, sizeof(h->bitmap));
    h->used_bytes = 0;
    uint64_t cursor = h->start, prev_size = 0;
    for (uint64_t i = 0; i <= n; i++) {
        uint64_t next = i < n ? live[i].offset : h->end;
        if (next > cursor) { /* the gap becomes one free block */
            write_tag(base, cursor, next - cursor, prev_size);
            list_insert(base, h, cursor);
            prev_size = next - cursor;
            cursor = next;
        }
        if (i == n) break;
        write_tag(base, cursor, live[i].size, prev_size);
        pa_block_at(base, cursor)->entry = live[i].entry;
        h->used_bytes += live[i].size;
        prev_size = live[i].size;
        cursor += live[i].size;
    }
}

#define FAIL(...)                                                 \
    do {                                                          \
        if (msg && msg_size) snprintf(msg, msg_size, __VA_ARGS__); \
        return PA_ERR_CORRUPT;                                    \
    } while (0)

int pa_heap_check(uint8_t *base, const pa_heap *h, char *msg, uint64_t msg_size) {
    uint64_t off = h->start, prev_size = 0, used = 0, free_blocks = 0;
    int prev_free = 0;
    while (off < h->end) {
        pa_block *b = pa_block_at(base, off);
        if (b->magic != PA_BLOCK_MAGIC) FAIL("block at %llu: bad magic", (unsigned long long)off);
        if (b->size < PA_BLOCK_HEADER || b->size % PA_ALIGNMENT || off + b->size > h->end)
            FAIL("block at %llu: bad size %llu", (unsigned long long)off,
                 (unsigned long long)b->size);
        if (b->prev_size != prev_size)
            FAIL("block at %llu: prev_size %llu != %llu", (unsigned long long)off,
                 (unsigned long long)b->prev_size, (unsigned long long)prev_size);
        int is_free = (b->flags & PA_BLOCK_FREE) != 0;
        if (is_free && prev_free) FAIL("block at %llu: two adjacent free blocks", (unsigned long long)off);
        if (is_free) free_blocks++;
        else used += b->size;
        prev_free = is_free;
        prev_size = b->size;
        off += b->size;
    }
    if (off != h->end) FAIL("heap walk ended at %llu, not %llu", (unsigned long long)off,
                            (unsigned long long)h->end);
    if (used != h->used_bytes)
        FAIL("allocated blocks sum to %llu, used_bytes says %llu", (unsigned long long)used,
             (unsigned long long)h->used_bytes);
    uint64_t listed = 0;
    for (uint32_t bin = 0; bin < PA_NBINS; bin++) {
        int bit = (h->bitmap[bin / 64] >> (bin % 64)) & 1;
        if (bit != (h->free_heads[bin] != 0)) FAIL("bin %u: bitmap bit disagrees with list", bin);
        uint64_t prev = 0;
        for (uint64_t f = h->free_heads[bin]; f; f = pa_block_at(base, f)->next_free) {
            pa_block *b = pa_block_at(base, f);
            if (f < h->start || f >= h->end) FAIL("bin %u: link out of heap", bin);
            if (!(b->flags & PA_BLOCK_FREE)) FAIL("bin %u: block %llu not free", bin, (unsigned long long)f);
            if (bin_of(b->size) != bin) FAIL("bin %u: block of size %llu misfiled", bin,
                                             (unsigned long long)b->size);
            if (b->prev_free != prev) FAIL("bin %u: broken back link", bin);
            prev = f;
            if (++listed > free_blocks) FAIL("free lists hold more blocks than the heap");
        }
    }
    if (listed != free_blocks) FAIL("%llu free blocks, %llu listed", (unsigned long long)free_blocks,
                                    (unsigned long long)listed);
    return PA_OK;
}

int pa_heap_dump(uint8_t *base, const pa_heap *h, char *out, uint64_t out_size) {
    uint64_t pos = 0;
    if (out_size) out[0] = 0;
    for (uint64_t off = h->start; off < h->end; off += pa_block_at(base, off)->size) {
        pa_block *b = pa_block_at(base, off);
        if (b->size == 0) return PA_ERR_CORRUPT;
        int n = snprintf(out + pos, out_size - pos, "%llu %llu %d\n", (unsigned long long)(off - h->start),
                         (unsigned long long)b->size, (b->flags & PA_BLOCK_FREE) ? 1 : 0);
        if (n < 0 || (uint64_t)n >= out_size - pos) return PA_ERR_INVALID;
        pos += (uint64_t)n;
    }
    return PA_OK;
}
