/*
 * fromstore — "rebuild the entry from the database": when a netsplit heals
 * and two copies of a key meet, the copy this map's MapStore holds on the
 * node deciding the merge (maps.<name>.map_store) wins over both. Keys the
 * store does not hold, and maps without a store, fall back to latestupdate
 * (the entry updated last wins; the merging entry wins ties). A store that
 * cannot be read fails the merge, which parks the entry for an operator
 * rather than guessing. The Go version is examples/policies/fromstore.
 *
 * A stored value equal to one of the two copies keeps that copy (nothing
 * is copied back); any other is put with a version above all three, so it
 * is the newest version everywhere.
 *
 * Build (plugins/build-policies.sh c):
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory -Wall -Wextra -Werror \
 *         -I sdk/c -Wl,--no-entry -Wl,--strip-all \
 *         -o examples/policies/c/fromstore/fromstore.wasm \
 *         examples/policies/c/fromstore/fromstore.c
 */
#include "mendmq_policy.h"
#include "mendmq_stored.h"

/* same compares 8 bytes per step: the host checks for a stopped call at the
 * head of every loop iteration (a call out of the module), so a loop per
 * byte would cost more than the rest of the merge. */
static int same(mendmq_str a, mendmq_str b) {
    if (a.len != b.len) return 0;
    uint32_t i = 0;
    for (; i + 8 <= a.len; i += 8)
        if (mendmq_load_u64(a.ptr + i) != mendmq_load_u64(b.ptr + i)) return 0;
    for (; i < a.len; i++)
        if (a.ptr[i] != b.ptr[i]) return 0;
    return 1;
}

static mendmq_result merge(const mendmq_str map_name, const mendmq_entry *merging,
                           const mendmq_entry *existing) {
    (void)map_name;
    mendmq_entry stored;
    int32_t st = mendmq_stored_entry(merging->key, &stored);
    if (st == MENDMQ_STORED_NOT_FOUND || st == MENDMQ_STORED_NO_STORE) {
        if (existing == 0 || merging->last_update_time >= existing->last_update_time)
            return mendmq_take_merging();
        return mendmq_keep_existing();
    }
    if (st != MENDMQ_STORED_OK) return mendmq_fail(mendmq_stored_status_text(st));
    if (existing != 0 && same(stored.value, existing->value)) return mendmq_keep_existing();
    if (same(stored.value, merging->value)) return mendmq_take_merging();
    int64_t v = stored.version > merging->version ? stored.version : merging->version;
    if (existing != 0 && existing->version > v) v = existing->version;
    stored.version = v + 1;
    return mendmq_put(&stored);
}

MENDMQ_POLICY(merge)
