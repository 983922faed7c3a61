/*
 * mendmq_policy.h — write a mendmq merge policy in C (ABI version 1).
 *
 * Header-only, freestanding: no libc, no allocator, nothing to link. A policy
 * is one C file that includes this header, defines one function and names it
 * with MENDMQ_POLICY:
 *
 *   #include "mendmq_policy.h"
 *
 *   static mendmq_result merge(const mendmq_str map_name,
 *                              const mendmq_entry *merging,
 *                              const mendmq_entry *existing) {
 *       if (existing == 0 || merging->last_update_time >= existing->last_update_time)
 *           return mendmq_take_merging();
 *       return mendmq_keep_existing();
 *   }
 *   MENDMQ_POLICY(merge)
 *
 * Build (Debian clang + lld):
 *
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory \
 *         -I sdk/c -Wl,--no-entry -Wl,--strip-all -o policy.wasm policy.c
 *
 * The byte layout this header reads and writes is specified in sdk/ABI.md.
 * Every entry pointer handed to the policy points into the request buffer:
 * valid until the policy returns, read-only. To build a new value, take
 * memory from mendmq_scratch(); it is valid until the policy returns, which
 * is long enough because the header copies the result out right away.
 */
#ifndef MENDMQ_POLICY_H
#define MENDMQ_POLICY_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "mendmq_policy.h targets wasm32: build with clang --target=wasm32"
#endif
#if !defined(__wasm_bulk_memory__)
#error "build with -mbulk-memory: the header copies with memory.copy instead of a libc memcpy"
#endif

#define MENDMQ_ABI_VERSION 1u

/* Verdicts (wire values). */
#define MENDMQ_KEEP_EXISTING 0u /* leave the existing entry (absent stays absent) */
#define MENDMQ_TAKE_MERGING 1u  /* store the merging entry unchanged */
#define MENDMQ_PUT 2u           /* store result.entry (same key as merging) */
#define MENDMQ_DELETE 3u        /* remove the key */
#define MENDMQ_FAIL 4u          /* refuse: host keeps existing, parks merging */

#define MENDMQ_MAX_REASON_LEN 1024u

/* Fixed sizes of the wire format, in bytes. */
#define MENDMQ_REQUEST_HEADER_SIZE 16u
#define MENDMQ_ITEM_HEADER_SIZE 8u
#define MENDMQ_ENTRY_HEADER_SIZE 72u
#define MENDMQ_RESULT_HEADER_SIZE 8u
#define MENDMQ_RESULT_ITEM_HEADER_SIZE 8u

/* A byte string (not NUL-terminated). */
typedef struct mendmq_str {
    const uint8_t *ptr;
    uint32_t len;
} mendmq_str;

/* One map entry. Times are Unix milliseconds; expiration_time 0 = never. */
typedef struct mendmq_entry {
    mendmq_str key;
    mendmq_str value;
    int64_t cost;
    int64_t hits;
    int64_t version;
    int64_t creation_time;
    int64_t last_access_time;
    int64_t last_update_time;
    int64_t last_stored_time;
    int64_t expiration_time;
} mendmq_entry;

/* A policy's answer; build it with the helpers below. */
typedef struct mendmq_result {
    uint32_t verdict;
    mendmq_entry entry; /* MENDMQ_PUT only */
    mendmq_str reason;  /* MENDMQ_FAIL only */
} mendmq_result;

typedef mendmq_result (*mendmq_policy_fn)(const mendmq_str map_name, const mendmq_entry *merging,
                                          const mendmq_entry *existing);

static inline mendmq_result mendmq_keep_existing(void) {
    mendmq_result r = {0};
    r.verdict = MENDMQ_KEEP_EXISTING;
    return r;
}
static inline mendmq_result mendmq_take_merging(void) {
    mendmq_result r = {0};
    r.verdict = MENDMQ_TAKE_MERGING;
    return r;
}
static inline mendmq_result mendmq_delete(void) {
    mendmq_result r = {0};
    r.verdict = MENDMQ_DELETE;
    return r;
}
static inline mendmq_result mendmq_put(const mendmq_entry *e) {
    mendmq_result r = {0};
    r.verdict = MENDMQ_PUT;
    r.entry = *e;
    return r;
}
/* reason: a NUL-terminated string (static storage or mendmq_scratch). */
static inline mendmq_result mendmq_fail(const char *reason) {
    mendmq_result r = {0};
    uint32_t n = 0;
    r.verdict = MENDMQ_FAIL;
    while (reason[n] != 0 && n < MENDMQ_MAX_REASON_LEN) n++;
    r.reason.ptr = (const uint8_t *)reason;
    r.reason.len = n;
    return r;
}

/* Little-endian loads and stores (wasm32 is little-endian; these also keep
 * unaligned access well defined). */
static inline uint32_t mendmq_load_u32(const uint8_t *p) {
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}
static inline uint64_t mendmq_load_u64(const uint8_t *p) {
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return v;
}
static inline void mendmq_store_u32(uint8_t *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void mendmq_store_u64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }

static inline int mendmq_str_eq(mendmq_str a, mendmq_str b) {
    if (a.len != b.len) return 0;
    for (uint32_t i = 0; i < a.len; i++)
        if (a.ptr[i] != b.ptr[i]) return 0;
    return 1;
}
static inline int mendmq_str_eq_cstr(mendmq_str a, const char *s) {
    uint32_t i = 0;
    for (; s[i] != 0; i++)
        if (i >= a.len || a.ptr[i] != (uint8_t)s[i]) return 0;
    return i == a.len;
}

/* ---- memory: a bump allocator over memory.grow ------------------------- */

static inline uint64_t mendmq__pad8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

extern unsigned char __heap_base;

/* mendmq__brk is the first byte not handed out yet. Regions are never freed;
 * buffers grow by doubling, so the waste stays below the largest buffer. */
static uint32_t mendmq__brk;

static uint8_t *mendmq__sbrk(uint64_t n) {
    if (mendmq__brk == 0) mendmq__brk = ((uint32_t)(uintptr_t)&__heap_base + 7u) & ~7u;
    n = (n + 7u) & ~(uint64_t)7u;
    uint64_t end = (uint64_t)mendmq__brk + n;
    if (end > 0xFFFFFFFFull) return 0;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uint64_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    uint8_t *p = (uint8_t *)(uintptr_t)mendmq__brk;
    mendmq__brk = (uint32_t)end;
    return p;
}

/* A growable buffer. */
typedef struct mendmq__buf {
    uint8_t *ptr;
    uint32_t cap;
} mendmq__buf;

/* Ensure b holds at least n bytes; keep_len bytes of old content are copied. */
static int mendmq__reserve(mendmq__buf *b, uint64_t n, uint32_t keep_len) {
    if (n <= b->cap) return 1;
    uint64_t c = (uint64_t)b->cap * 2u;
    if (c < n) c = n;
    if (c < 4096u) c = 4096u;
    if (c > 0xFFFFFFFFull) c = n;
    uint8_t *p = mendmq__sbrk(c);
    if (p == 0) return 0;
    if (keep_len > 0) __builtin_memcpy(p, b->ptr, keep_len);
    b->ptr = p;
    b->cap = (uint32_t)c;
    return 1;
}

static mendmq__buf mendmq__in, mendmq__out, mendmq__scratch;
static uint32_t mendmq__scratch_used;

/* mendmq_scratch returns n bytes valid until the policy returns, or 0 when
 * the memory limit is reached (answer mendmq_fail then). */
static inline void *mendmq_scratch(uint32_t n) {
    uint64_t need = (uint64_t)mendmq__scratch_used + mendmq__pad8(n);
    if (need > mendmq__scratch.cap) {
        /* Start a fresh region: earlier scratch pointers stay valid. */
        mendmq__buf fresh = {0};
        if (!mendmq__reserve(&fresh, need > 2u * mendmq__scratch.cap ? need : 2u * mendmq__scratch.cap, 0))
            return 0;
        mendmq__scratch = fresh;
        mendmq__scratch_used = 0;
    }
    void *p = mendmq__scratch.ptr + mendmq__scratch_used;
    mendmq__scratch_used = (uint32_t)need;
    return p;
}

/* ---- request decoding, result encoding ---------------------------------- */

/* Decode the entry at buf[*off], len total; 0 on malformed input. */
static int mendmq__decode_entry(const uint8_t *buf, uint64_t len, uint64_t *off, mendmq_entry *e) {
    if (*off > len || len - *off < MENDMQ_ENTRY_HEADER_SIZE) return 0;
    const uint8_t *h = buf + *off;
    e->cost = (int64_t)mendmq_load_u64(h + 0);
    e->hits = (int64_t)mendmq_load_u64(h + 8);
    e->version = (int64_t)mendmq_load_u64(h + 16);
    e->creation_time = (int64_t)mendmq_load_u64(h + 24);
    e->last_access_time = (int64_t)mendmq_load_u64(h + 32);
    e->last_update_time = (int64_t)mendmq_load_u64(h + 40);
    e->last_stored_time = (int64_t)mendmq_load_u64(h + 48);
    e->expiration_time = (int64_t)mendmq_load_u64(h + 56);
    uint64_t kl = mendmq_load_u32(h + 64), vl = mendmq_load_u32(h + 68);
    *off += MENDMQ_ENTRY_HEADER_SIZE;
    if (mendmq__pad8(kl + vl) > len - *off) return 0;
    e->key.ptr = buf + *off;
    e->key.len = (uint32_t)kl;
    e->value.ptr = buf + *off + kl;
    e->value.len = (uint32_t)vl;
    *off += mendmq__pad8(kl + vl);
    return 1;
}

static uint32_t mendmq__out_len;

static int mendmq__emit(const mendmq_result *r) {
    mendmq_result fixed = *r;
    if (fixed.verdict > MENDMQ_FAIL) fixed = mendmq_fail("policy returned an unknown verdict");
    uint64_t need = MENDMQ_RESULT_ITEM_HEADER_SIZE;
    if (fixed.verdict == MENDMQ_PUT)
        need += MENDMQ_ENTRY_HEADER_SIZE + mendmq__pad8((uint64_t)fixed.entry.key.len + fixed.entry.value.len);
    if (fixed.verdict == MENDMQ_FAIL) {
        if (fixed.reason.len > MENDMQ_MAX_REASON_LEN) fixed.reason.len = MENDMQ_MAX_REASON_LEN;
        need += mendmq__pad8(fixed.reason.len);
    }
    if (!mendmq__reserve(&mendmq__out, (uint64_t)mendmq__out_len + need, mendmq__out_len)) return 0;
    uint8_t *p = mendmq__out.ptr + mendmq__out_len;
    mendmq_store_u32(p, fixed.verdict);
    mendmq_store_u32(p + 4, fixed.verdict == MENDMQ_FAIL ? fixed.reason.len : 0);
    p += MENDMQ_RESULT_ITEM_HEADER_SIZE;
    if (fixed.verdict == MENDMQ_PUT) {
        const mendmq_entry *e = &fixed.entry;
        mendmq_store_u64(p + 0, (uint64_t)e->cost);
        mendmq_store_u64(p + 8, (uint64_t)e->hits);
        mendmq_store_u64(p + 16, (uint64_t)e->version);
        mendmq_store_u64(p + 24, (uint64_t)e->creation_time);
        mendmq_store_u64(p + 32, (uint64_t)e->last_access_time);
        mendmq_store_u64(p + 40, (uint64_t)e->last_update_time);
        mendmq_store_u64(p + 48, (uint64_t)e->last_stored_time);
        mendmq_store_u64(p + 56, (uint64_t)e->expiration_time);
        mendmq_store_u32(p + 64, e->key.len);
        mendmq_store_u32(p + 68, e->value.len);
        p += MENDMQ_ENTRY_HEADER_SIZE;
        if (e->key.len) __builtin_memcpy(p, e->key.ptr, e->key.len);
        if (e->value.len) __builtin_memcpy(p + e->key.len, e->value.ptr, e->value.len);
        uint64_t body = (uint64_t)e->key.len + e->value.len;
        if (mendmq__pad8(body) != body) __builtin_memset(p + body, 0, mendmq__pad8(body) - body);
    } else if (fixed.verdict == MENDMQ_FAIL) {
        if (fixed.reason.len) __builtin_memcpy(p, fixed.reason.ptr, fixed.reason.len);
        uint64_t n = fixed.reason.len;
        if (mendmq__pad8(n) != n) __builtin_memset(p + n, 0, mendmq__pad8(n) - n);
    }
    mendmq__out_len += (uint32_t)need;
    return 1;
}

/* mendmq__serve runs fn over the request at ptr (must be the input buffer)
 * and returns the packed (offset << 32 | length) of the results, 0 on error. */
static uint64_t mendmq__serve(mendmq_policy_fn fn, uint32_t ptr, uint32_t len, int batch) {
    const uint8_t *buf = (const uint8_t *)(uintptr_t)ptr;
    if (mendmq__in.ptr == 0 || buf != mendmq__in.ptr || len > mendmq__in.cap) return 0;
    if (len < MENDMQ_REQUEST_HEADER_SIZE) return 0;
    if (mendmq_load_u32(buf) != MENDMQ_ABI_VERSION || mendmq_load_u32(buf + 12) != 0) return 0;
    uint64_t count = mendmq_load_u32(buf + 4), name_len = mendmq_load_u32(buf + 8);
    if (count == 0 || (!batch && count != 1)) return 0;
    if (mendmq__pad8(name_len) > (uint64_t)len - MENDMQ_REQUEST_HEADER_SIZE) return 0;
    mendmq_str name = {buf + MENDMQ_REQUEST_HEADER_SIZE, (uint32_t)name_len};
    uint64_t off = MENDMQ_REQUEST_HEADER_SIZE + mendmq__pad8(name_len);

    mendmq__out_len = 0;
    if (!mendmq__reserve(&mendmq__out, MENDMQ_RESULT_HEADER_SIZE, 0)) return 0;
    mendmq_store_u32(mendmq__out.ptr, (uint32_t)count);
    mendmq_store_u32(mendmq__out.ptr + 4, 0);
    mendmq__out_len = MENDMQ_RESULT_HEADER_SIZE;

    for (uint64_t i = 0; i < count; i++) {
        if (off > len || len - off < MENDMQ_ITEM_HEADER_SIZE) return 0;
        uint32_t flags = mendmq_load_u32(buf + off);
        if ((flags & ~1u) != 0 || mendmq_load_u32(buf + off + 4) != 0) return 0;
        off += MENDMQ_ITEM_HEADER_SIZE;
        mendmq_entry merging, existing;
        if (!mendmq__decode_entry(buf, len, &off, &merging)) return 0;
        int has_existing = (flags & 1u) != 0;
        if (has_existing && !mendmq__decode_entry(buf, len, &off, &existing)) return 0;
        mendmq__scratch_used = 0;
        mendmq_result r = fn(name, &merging, has_existing ? &existing : 0);
        if (!mendmq__emit(&r)) return 0;
    }
    if (off != len) return 0;
    return ((uint64_t)(uint32_t)(uintptr_t)mendmq__out.ptr << 32) | mendmq__out_len;
}

static uint32_t mendmq__alloc(uint32_t n) {
    if (n == 0) n = 8;
    if (!mendmq__reserve(&mendmq__in, n, 0)) return 0;
    return (uint32_t)(uintptr_t)mendmq__in.ptr;
}

/* MENDMQ_POLICY(fn) defines the module's exports around fn. Use it once. */
#define MENDMQ_POLICY(fn)                                                                          \
    __attribute__((export_name("mendmq_abi_version"))) uint32_t mendmq_export_abi_version(void) { \
        return MENDMQ_ABI_VERSION;                                                                 \
    }                                                                                              \
    __attribute__((export_name("mendmq_alloc"))) uint32_t mendmq_export_alloc(uint32_t n) {       \
        return mendmq__alloc(n);                                                                   \
    }                                                                                              \
    __attribute__((export_name("merge"))) uint64_t mendmq_export_merge(uint32_t p, uint32_t n) {  \
        return mendmq__serve(fn, p, n, 0);                                                         \
    }                                                                                              \
    __attribute__((export_name("merge_batch"))) uint64_t mendmq_export_merge_batch(uint32_t p,    \
                                                                                    uint32_t n) {  \
        return mendmq__serve(fn, p, n, 1);                                                         \
    }

#endif /* MENDMQ_POLICY_H */
