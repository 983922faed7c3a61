/*
 * mendmq_stored.h — read the MapStore from a C merge policy (sdk/ABI.md §9).
 *
 * A map with maps.<name>.map_store keeps its entries in the storage of the
 * node that owns them. While a policy decides a merge, it may read the copy
 * of the key being merged that the deciding node has stored — "rebuild the
 * entry from the database":
 *
 *   #include "mendmq_policy.h"
 *   #include "mendmq_stored.h"
 *
 *   static mendmq_result merge(const mendmq_str map_name, const mendmq_entry *merging,
 *                              const mendmq_entry *existing) {
 *       mendmq_entry stored;
 *       int32_t st = mendmq_stored_entry(merging->key, &stored);
 *       if (st == MENDMQ_STORED_OK) return mendmq_put(&stored);
 *       if (st == MENDMQ_STORED_NOT_FOUND || st == MENDMQ_STORED_NO_STORE)
 *           return mendmq_take_merging();
 *       return mendmq_fail(mendmq_stored_status_text(st)); // park, do not guess
 *   }
 *   MENDMQ_POLICY(merge)
 *
 * mendmq_stored_entry calls the host function mendmq.stored_entry_v1. The
 * linker imports it only into a module that calls mendmq_stored_entry, so
 * including this header costs nothing otherwise; a host without the
 * function refuses a module that imports it, at load, naming the import.
 */
#ifndef MENDMQ_STORED_H
#define MENDMQ_STORED_H

#include "mendmq_policy.h"

/* The import, as "module.function"; the "_v1" is the import's own version. */
#define MENDMQ_STORED_IMPORT "mendmq.stored_entry_v1"

/* Largest encoded stored entry the host hands out (header, key, value,
 * padding): room for a 4096-byte key and an 8 MiB value. */
#define MENDMQ_STORED_MAX_SIZE (16u << 20)

/* mendmq_stored_entry results. The host's statuses (-1 .. -6, sdk/ABI.md §9)
 * and two of this header's own (-7, -8). */
#define MENDMQ_STORED_OK 0
#define MENDMQ_STORED_NOT_FOUND (-1)   /* the map's store has no entry under the key */
#define MENDMQ_STORED_NO_STORE (-2)    /* the map keeps no store on this node */
#define MENDMQ_STORED_DENIED (-3)      /* not during a merge, or not a key being merged */
#define MENDMQ_STORED_TOO_LARGE (-4)   /* the entry exceeds MENDMQ_STORED_MAX_SIZE */
#define MENDMQ_STORED_ERROR (-5)       /* the host could not read its store */
#define MENDMQ_STORED_BAD_POINTER (-6) /* key or buffer outside the module's memory */
#define MENDMQ_STORED_MALFORMED (-7)   /* the host's answer broke the layout */
#define MENDMQ_STORED_NO_MEMORY (-8)   /* the module's memory limit was reached */

/* The host function: writes key's stored entry at buf if it fits in
 * buf_cap bytes and returns its size (>= 72), or returns a negative status. */
__attribute__((import_module("mendmq"), import_name("stored_entry_v1"))) int32_t
mendmq__stored_entry_v1(uint32_t key_ptr, uint32_t key_len, uint32_t buf_ptr, uint32_t buf_cap);

/* mendmq_stored_decode decodes what stored_entry_v1 writes: exactly one
 * EntryView (sdk/ABI.md §4 layout: 72-byte header, key, value, zero padding
 * to a multiple of 8). Returns 1 and fills *e (key and value point into
 * buf), or 0 when len does not match the lengths in the header. */
static inline int mendmq_stored_decode(const uint8_t *buf, uint32_t len, mendmq_entry *e) {
    uint64_t off = 0;
    if (!mendmq__decode_entry(buf, len, &off, e)) return 0;
    return off == len;
}

/* The buffer entries are read into; reused by every call. */
static mendmq__buf mendmq__stored;

/* mendmq_stored_entry reads the stored copy of key, which must be the key of
 * an entry the current call merges (normally merging->key), from the policy
 * function. On MENDMQ_STORED_OK *out holds the entry with the metadata it
 * was stored with (last_stored_time: when it was written there); its key and
 * value point into a buffer of this header, valid until the next
 * mendmq_stored_entry call or until the policy returns. mendmq_put(out)
 * takes it as it is. Otherwise it returns one of the statuses above. */
static inline int32_t mendmq_stored_entry(mendmq_str key, mendmq_entry *out) {
    /* Asked again at once for the same key, the host answers the same
     * entry: the second call fits. */
    for (int attempt = 0; attempt < 3; attempt++) {
        int32_t n = mendmq__stored_entry_v1((uint32_t)(uintptr_t)key.ptr, key.len,
                                            (uint32_t)(uintptr_t)mendmq__stored.ptr, mendmq__stored.cap);
        if (n < 0) return n;
        if ((uint32_t)n < MENDMQ_ENTRY_HEADER_SIZE || (uint32_t)n > MENDMQ_STORED_MAX_SIZE)
            return MENDMQ_STORED_MALFORMED;
        if ((uint32_t)n <= mendmq__stored.cap) {
            if (!mendmq_stored_decode(mendmq__stored.ptr, (uint32_t)n, out)) return MENDMQ_STORED_MALFORMED;
            return MENDMQ_STORED_OK;
        }
        /* Larger than the buffer, so nothing was written: make room. */
        if (!mendmq__reserve(&mendmq__stored, (uint32_t)n, 0)) return MENDMQ_STORED_NO_MEMORY;
    }
    return MENDMQ_STORED_MALFORMED;
}

/* mendmq_stored_status_text names a status, for mendmq_fail. */
static inline const char *mendmq_stored_status_text(int32_t status) {
    switch (status) {
    case MENDMQ_STORED_OK: return "stored entry read";
    case MENDMQ_STORED_NOT_FOUND: return "mapstore: no stored entry for this key";
    case MENDMQ_STORED_NO_STORE: return "mapstore: the map has no map store on this node";
    case MENDMQ_STORED_DENIED: return "mapstore: denied: only the keys being merged, during a merge";
    case MENDMQ_STORED_TOO_LARGE: return "mapstore: stored entry larger than 16 MiB";
    case MENDMQ_STORED_ERROR: return "mapstore: map store unavailable";
    case MENDMQ_STORED_BAD_POINTER: return "mapstore: key or buffer outside the module's memory";
    case MENDMQ_STORED_MALFORMED: return "mapstore: malformed answer from the host";
    case MENDMQ_STORED_NO_MEMORY: return "mapstore: out of memory for the stored entry";
    }
    return "mapstore: unknown status";
}

#endif /* MENDMQ_STORED_H */
