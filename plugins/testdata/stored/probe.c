/*
 * probe.c — a policy that reports what sdk/c/mendmq_stored.h and the host's
 * mendmq.stored_entry_v1 answer, for plugins' stored-entry tests and the
 * map-store heal test of broker/clustertests. What it does depends on the
 * map name:
 *
 *   "init"        puts the merging entry with value = the statuses the
 *                 import returned when called from _initialize and from
 *                 mendmq_alloc (two little-endian int32), i.e. outside a merge;
 *   "badptr"      puts value = the statuses for a key outside memory and,
 *                 for a stored entry, a buffer outside memory (two int32);
 *   "peek:KEY"    asks for KEY instead of the merging key; puts value =
 *                 the status (int32) then, if found, the stored value;
 *   "decode"      decodes the merging value with mendmq_stored_decode:
 *                 deletes when it is refused, else puts value = key_len
 *                 (uint32) + key + value with the decoded numbers;
 *   anything else reads the merging key's stored entry: found, it puts the
 *                 stored entry with value "stored:" + the stored value;
 *                 not found or no store, the merging entry with value
 *                 "notfound:" or "nostore:" + the merging value; any other
 *                 status fails with its text.
 *
 * Built and checked in as probe.wasm (plugins/build-policies.sh hostile):
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory -Wall -Wextra -Werror \
 *         -I sdk/c -Wl,--no-entry -Wl,--strip-all \
 *         -o plugins/testdata/stored/probe.wasm plugins/testdata/stored/probe.c
 */
#include "mendmq_policy.h"
#include "mendmq_stored.h"

static const uint8_t some_key[] = "k";
static int32_t init_status = 1, alloc_status = 1;

static int32_t ask_outside_merge(void) {
    return mendmq__stored_entry_v1((uint32_t)(uintptr_t)some_key, 1, 0, 0);
}

static int has_prefix(mendmq_str s, const char *p) {
    uint32_t i = 0;
    for (; p[i] != 0; i++)
        if (i >= s.len || s.ptr[i] != (uint8_t)p[i]) return 0;
    return 1;
}

/* with_value returns e with value = prefix + v (prefix NUL-terminated). */
static int with_value(mendmq_entry *e, const char *prefix, mendmq_str v) {
    uint32_t n = 0;
    while (prefix[n] != 0) n++;
    uint8_t *p = mendmq_scratch(n + v.len);
    if (p == 0) return 0;
    __builtin_memcpy(p, prefix, n);
    if (v.len) __builtin_memcpy(p + n, v.ptr, v.len);
    e->value.ptr = p;
    e->value.len = n + v.len;
    return 1;
}

/* put_ints returns merging with value = count little-endian int32 values
 * followed by tail. */
static mendmq_result put_ints(const mendmq_entry *merging, const int32_t *v, uint32_t count, mendmq_str tail) {
    mendmq_entry e = *merging;
    uint8_t *p = mendmq_scratch(4 * count + tail.len);
    if (p == 0) return mendmq_fail("probe: out of memory");
    for (uint32_t i = 0; i < count; i++) mendmq_store_u32(p + 4 * i, (uint32_t)v[i]);
    if (tail.len) __builtin_memcpy(p + 4 * count, tail.ptr, tail.len);
    e.value.ptr = p;
    e.value.len = 4 * count + tail.len;
    return mendmq_put(&e);
}

static mendmq_result probe(const mendmq_str map_name, const mendmq_entry *merging, const mendmq_entry *existing) {
    (void)existing;
    mendmq_entry e;
    mendmq_str none = {0, 0};
    if (mendmq_str_eq_cstr(map_name, "init")) {
        int32_t v[2] = {init_status, alloc_status};
        return put_ints(merging, v, 2, none);
    }
    if (mendmq_str_eq_cstr(map_name, "badptr")) {
        int32_t v[2];
        v[0] = mendmq__stored_entry_v1(0xFFFFFFF0u, 64, 0, 0);
        v[1] = mendmq__stored_entry_v1((uint32_t)(uintptr_t)merging->key.ptr, merging->key.len, 0xFFFFFF00u, 4096);
        return put_ints(merging, v, 2, none);
    }
    if (has_prefix(map_name, "peek:")) {
        mendmq_str key = {map_name.ptr + 5, map_name.len - 5};
        int32_t st = mendmq_stored_entry(key, &e);
        return put_ints(merging, &st, 1, st == MENDMQ_STORED_OK ? e.value : none);
    }
    if (mendmq_str_eq_cstr(map_name, "decode")) {
        if (!mendmq_stored_decode(merging->value.ptr, merging->value.len, &e)) return mendmq_delete();
        mendmq_entry out = e;
        uint8_t *p = mendmq_scratch(4 + e.key.len + e.value.len);
        if (p == 0) return mendmq_fail("probe: out of memory");
        mendmq_store_u32(p, e.key.len);
        if (e.key.len) __builtin_memcpy(p + 4, e.key.ptr, e.key.len);
        if (e.value.len) __builtin_memcpy(p + 4 + e.key.len, e.value.ptr, e.value.len);
        out.key = merging->key;
        out.value.ptr = p;
        out.value.len = 4 + e.key.len + e.value.len;
        return mendmq_put(&out);
    }
    int32_t st = mendmq_stored_entry(merging->key, &e);
    switch (st) {
    case MENDMQ_STORED_OK:
        if (!with_value(&e, "stored:", e.value)) return mendmq_fail("probe: out of memory");
        return mendmq_put(&e);
    case MENDMQ_STORED_NOT_FOUND:
    case MENDMQ_STORED_NO_STORE:
        e = *merging;
        if (!with_value(&e, st == MENDMQ_STORED_NOT_FOUND ? "notfound:" : "nostore:", merging->value))
            return mendmq_fail("probe: out of memory");
        return mendmq_put(&e);
    }
    return mendmq_fail(mendmq_stored_status_text(st));
}

/* The exports MENDMQ_POLICY would define, plus _initialize, with the
 * import called from outside a merge in _initialize and mendmq_alloc. */
__attribute__((export_name("_initialize"))) void probe_initialize(void) { init_status = ask_outside_merge(); }
__attribute__((export_name("mendmq_abi_version"))) uint32_t probe_abi_version(void) { return MENDMQ_ABI_VERSION; }
__attribute__((export_name("mendmq_alloc"))) uint32_t probe_alloc(uint32_t n) {
    alloc_status = ask_outside_merge();
    return mendmq__alloc(n);
}
__attribute__((export_name("merge"))) uint64_t probe_merge(uint32_t p, uint32_t n) {
    return mendmq__serve(probe, p, n, 0);
}
__attribute__((export_name("merge_batch"))) uint64_t probe_merge_batch(uint32_t p, uint32_t n) {
    return mendmq__serve(probe, p, n, 1);
}
