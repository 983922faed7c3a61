/*
 * latestupdate — the built-in `latestupdate` policy written in C, to compare
 * a C module with the Go one (plugins/BENCHMARKS-plugins.md) and to show the
 * smallest useful C policy. Hazelcast semantics: the entry updated last
 * wins; the merging entry wins ties; a key present only on the merging side
 * is taken.
 *
 * Build (plugins/build-policies.sh c):
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory -Wall -Wextra -Werror \
 *         -I sdk/c -Wl,--no-entry -Wl,--strip-all \
 *         -o examples/policies/c/latestupdate/latestupdate.wasm \
 *         examples/policies/c/latestupdate/latestupdate.c
 */
#include "mendmq_policy.h"

static mendmq_result merge(const mendmq_str map_name, const mendmq_entry *merging,
                           const mendmq_entry *existing) {
    (void)map_name;
    if (existing == 0 || merging->last_update_time >= existing->last_update_time)
        return mendmq_take_merging();
    return mendmq_keep_existing();
}

MENDMQ_POLICY(merge)
