/*
 * hostile.c — misbehaving policy modules for plugins' containment tests. One
 * source, one module per HOSTILE_<MODE> define. Each module behaves unless
 * a test asks it not to, so it passes the load self-test — except
 * noexport, badversion and failing, which must be refused at load:
 *   - map name other than "evil": keeps the existing entry;
 *   - map "evil", key not starting with "boom": takes the merging entry;
 *   - map "evil", key starting with "boom": misbehaves as below
 *     (hugeresult and garbage misbehave for the whole "evil" request).
 *
 * Build all (plugins/build-policies.sh hostile), e.g. for loop.wasm:
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory -Wall -Wextra -Werror \
 *         -I sdk/c -Wl,--no-entry -Wl,--strip-all -DHOSTILE_LOOP \
 *         -o plugins/testdata/hostile/loop.wasm plugins/testdata/hostile/hostile.c
 *
 * Modes:
 *   loop        merge never returns (stopped by the per-call deadline)
 *   trap        merge executes `unreachable`
 *   growbomb    merge grows memory until refused, then fails with the page count
 *   noexport    exports no merge function (refused at load)
 *   badversion  mendmq_abi_version returns 99 (refused at load)
 *   hugeresult  merge returns a result of ~2 GiB past the end of memory
 *   garbage     merge returns a well-placed result with verdict 77
 *   wrongkey    merge puts an entry under another key
 *   failing     merge traps on every call, the smoke test too (refused at load)
 *   sandbox     merge probes WASI: pre-opened directories (fd 3..9) and a
 *               socket accept on fd 3; fails with "sandbox: prestat=E accept=E"
 *               (the errnos, 8 = EBADF when nothing is granted)
 */
#include "mendmq_policy.h"

/* The map the module misbehaves on; a test builds it for another one
 * (-DHOSTILE_MAP='"$retained"'). */
#ifndef HOSTILE_MAP
#define HOSTILE_MAP "evil"
#endif

static int evil(mendmq_str map_name) { return mendmq_str_eq_cstr(map_name, HOSTILE_MAP); }

static int boom(mendmq_str key) {
    return key.len >= 4 && key.ptr[0] == 'b' && key.ptr[1] == 'o' && key.ptr[2] == 'o' && key.ptr[3] == 'm';
}

static char msg[64];

#if defined(HOSTILE_SANDBOX)
__attribute__((import_module("wasi_snapshot_preview1"), import_name("fd_prestat_get"))) uint16_t
wasi_fd_prestat_get(uint32_t fd, uint32_t out);
__attribute__((import_module("wasi_snapshot_preview1"), import_name("sock_accept"))) uint16_t
wasi_sock_accept(uint32_t fd, uint32_t flags, uint32_t out);

static uint32_t put_num(uint32_t n, uint32_t v) {
    char digits[10];
    int d = 0;
    do {
        digits[d++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (d) msg[n++] = digits[--d];
    return n;
}

static const char *sandbox_msg(void) {
    static uint8_t scratch[16];
    uint32_t prestat = 8;
    for (uint32_t fd = 3; fd < 10; fd++) {
        uint16_t e = wasi_fd_prestat_get(fd, (uint32_t)(uintptr_t)scratch);
        if (e != 8) prestat = e;
    }
    uint16_t accept = wasi_sock_accept(3, 0, (uint32_t)(uintptr_t)scratch);
    const char *a = "sandbox: prestat=", *b = " accept=";
    uint32_t n = 0;
    for (uint32_t i = 0; a[i]; i++) msg[n++] = a[i];
    n = put_num(n, prestat);
    for (uint32_t i = 0; b[i]; i++) msg[n++] = b[i];
    n = put_num(n, accept);
    msg[n] = 0;
    return msg;
}
#endif

static const char *pages_msg(uint32_t pages) {
    const char *prefix = "memory.grow refused at ";
    uint32_t n = 0;
    for (; prefix[n]; n++) msg[n] = prefix[n];
    char digits[10];
    int d = 0;
    do {
        digits[d++] = (char)('0' + pages % 10);
        pages /= 10;
    } while (pages);
    while (d) msg[n++] = digits[--d];
    const char *suffix = " pages";
    for (uint32_t i = 0; suffix[i]; i++) msg[n++] = suffix[i];
    msg[n] = 0;
    return msg;
}

static mendmq_result policy(const mendmq_str map_name, const mendmq_entry *merging,
                            const mendmq_entry *existing) {
    (void)existing;
#if defined(HOSTILE_FAILING)
    (void)map_name;
    (void)merging;
    __builtin_trap();
#else
    if (!evil(map_name)) return mendmq_keep_existing();
    if (!boom(merging->key)) return mendmq_take_merging();
#if defined(HOSTILE_LOOP)
    volatile uint32_t spin = 0;
    for (;;) spin++;
#elif defined(HOSTILE_TRAP)
    __builtin_trap();
#elif defined(HOSTILE_GROWBOMB)
    while (__builtin_wasm_memory_grow(0, 1) != (size_t)-1) {
    }
    return mendmq_fail(pages_msg((uint32_t)__builtin_wasm_memory_size(0)));
#elif defined(HOSTILE_SANDBOX)
    return mendmq_fail(sandbox_msg());
#elif defined(HOSTILE_WRONGKEY)
    mendmq_entry e = *merging;
    e.key.ptr = (const uint8_t *)"another-key";
    e.key.len = 11;
    return mendmq_put(&e);
#endif
    return mendmq_take_merging();
#endif
}

/* The request's map name, read straight from the input buffer. */
static int request_is_evil(uint32_t p, uint32_t n) {
    const uint8_t *b = (const uint8_t *)(uintptr_t)p;
    if (n < MENDMQ_REQUEST_HEADER_SIZE) return 0;
    uint32_t len = mendmq_load_u32(b + 8);
    if (len > n - MENDMQ_REQUEST_HEADER_SIZE) return 0;
    mendmq_str name = {b + MENDMQ_REQUEST_HEADER_SIZE, len};
    return evil(name);
}

static uint64_t bogus(uint32_t p, uint32_t n) {
    (void)pages_msg;
    (void)boom;
#if defined(HOSTILE_HUGERESULT)
    if (request_is_evil(p, n)) return ((uint64_t)16u << 32) | 0x7FFFFFF0u;
#elif defined(HOSTILE_GARBAGE)
    static uint8_t out[16];
    if (request_is_evil(p, n)) {
        mendmq_store_u32(out, 1);     /* count */
        mendmq_store_u32(out + 4, 0); /* reserved */
        mendmq_store_u32(out + 8, 77); /* no such verdict */
        mendmq_store_u32(out + 12, 0);
        return ((uint64_t)(uint32_t)(uintptr_t)out << 32) | sizeof out;
    }
#else
    (void)request_is_evil;
    (void)p;
    (void)n;
#endif
    return 0;
}

__attribute__((export_name("mendmq_abi_version"))) uint32_t hostile_abi_version(void) {
#if defined(HOSTILE_BADVERSION)
    return 99;
#else
    return MENDMQ_ABI_VERSION;
#endif
}

__attribute__((export_name("mendmq_alloc"))) uint32_t hostile_alloc(uint32_t n) { return mendmq__alloc(n); }

#if !defined(HOSTILE_NOEXPORT)
__attribute__((export_name("merge"))) uint64_t hostile_merge(uint32_t p, uint32_t n) {
    uint64_t r = bogus(p, n);
    return r ? r : mendmq__serve(policy, p, n, 0);
}
__attribute__((export_name("merge_batch"))) uint64_t hostile_merge_batch(uint32_t p, uint32_t n) {
    uint64_t r = bogus(p, n);
    return r ? r : mendmq__serve(policy, p, n, 1);
}
#else
static void unused(void) {
    (void)policy;
    (void)bogus;
    (void)mendmq__serve;
}
__attribute__((export_name("not_merge"))) void hostile_not_merge(void) { unused(); }
#endif
