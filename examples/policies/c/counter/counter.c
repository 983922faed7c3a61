/*
 * counter — a custom merge policy in C: a counter whose increments made on
 * both sides of a netsplit are all kept after the heal.
 *
 * Why not just add the two values? Both sides start the split with the same
 * total, so existing + merging would count that common base twice. The value
 * is therefore a grow-only counter (a G-Counter CRDT): a list of per-writer
 * slots, each slot only ever increased by its own writer, and the counter's
 * total is the sum of the slots. Merging takes, per writer, the larger slot,
 * which sums every increment exactly once whatever the order of merges.
 *
 * Value layout: n records of 16 bytes, sorted by writer id, no duplicates:
 *   offset 0  u64 LE  writer id (e.g. a node or client id hash)
 *   offset 8  u64 LE  increments made by that writer
 * A value that is not a multiple of 16 bytes, or not sorted, is refused with
 * mendmq_fail: the host keeps the existing entry and parks the merging one.
 *
 * The merged entry keeps the merging entry's metadata, with
 * version = max(versions) + 1 and the latest update/access times.
 *
 * Build (plugins/build-policies.sh c):
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory -Wall -Wextra -Werror \
 *         -I sdk/c -Wl,--no-entry -Wl,--strip-all \
 *         -o examples/policies/c/counter/counter.wasm examples/policies/c/counter/counter.c
 */
#include "mendmq_policy.h"

#define RECORD 16u

static int valid(mendmq_str v) {
    if (v.len % RECORD != 0) return 0;
    for (uint32_t off = RECORD; off < v.len; off += RECORD)
        if (mendmq_load_u64(v.ptr + off - RECORD) >= mendmq_load_u64(v.ptr + off)) return 0;
    return 1;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static mendmq_result merge(const mendmq_str map_name, const mendmq_entry *merging,
                           const mendmq_entry *existing) {
    (void)map_name;
    if (!valid(merging->value)) return mendmq_fail("counter: merging value is not a sorted list of 16-byte slots");
    if (existing == 0) return mendmq_take_merging();
    if (!valid(existing->value)) return mendmq_fail("counter: existing value is not a sorted list of 16-byte slots");

    const mendmq_str a = merging->value, b = existing->value;
    uint8_t *out = mendmq_scratch(a.len + b.len);
    if (out == 0) return mendmq_fail("counter: out of memory");
    uint32_t i = 0, j = 0, n = 0;
    while (i < a.len || j < b.len) {
        uint64_t ida = i < a.len ? mendmq_load_u64(a.ptr + i) : UINT64_MAX;
        uint64_t idb = j < b.len ? mendmq_load_u64(b.ptr + j) : UINT64_MAX;
        uint64_t id, count;
        if (j >= b.len || (i < a.len && ida < idb)) {
            id = ida, count = mendmq_load_u64(a.ptr + i + 8), i += RECORD;
        } else if (i >= a.len || idb < ida) {
            id = idb, count = mendmq_load_u64(b.ptr + j + 8), j += RECORD;
        } else { /* same writer on both sides: its larger slot has every increment */
            uint64_t ca = mendmq_load_u64(a.ptr + i + 8), cb = mendmq_load_u64(b.ptr + j + 8);
            id = ida, count = ca > cb ? ca : cb, i += RECORD, j += RECORD;
        }
        mendmq_store_u64(out + n, id);
        mendmq_store_u64(out + n + 8, count);
        n += RECORD;
    }

    mendmq_entry e = *merging;
    e.value.ptr = out;
    e.value.len = n;
    e.cost = (int64_t)e.key.len + (int64_t)n;
    e.version = max64(merging->version, existing->version) + 1;
    e.last_update_time = max64(merging->last_update_time, existing->last_update_time);
    e.last_access_time = max64(merging->last_access_time, existing->last_access_time);
    e.creation_time = merging->creation_time < existing->creation_time ? merging->creation_time
                                                                        : existing->creation_time;
    return mendmq_put(&e);
}

MENDMQ_POLICY(merge)
