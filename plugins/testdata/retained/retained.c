/*
 * retained.c — test policy for sdk/c/mendmq_retained.h (not an example to
 * copy: see sdk/README.md). For map "$retained" it decodes the merging
 * entry's value and answers:
 *   - delete, when mendmq_retained_decode refuses the value;
 *   - put, with the merging key and a value that lists every decoded field
 *     (the layout retainedDump in plugins/retained_c_test.go writes from
 *     sdk.DecodeRetained), so the test compares the C and Go decoders.
 * Other maps: keep existing. Built by the test (clang, flags of
 * plugins/build-policies.sh); nothing is checked in.
 */
#include "mendmq_policy.h"
#include "mendmq_retained.h"

static uint8_t *put_u32(uint8_t *p, uint32_t v) {
    mendmq_store_u32(p, v);
    return p + 4;
}

/* present flag, length, bytes */
static uint8_t *put_str(uint8_t *p, uint32_t present, mendmq_str s) {
    p = put_u32(p, present);
    p = put_u32(p, s.len);
    if (s.len) __builtin_memcpy(p, s.ptr, s.len);
    return p + s.len;
}

static mendmq_result merge(const mendmq_str map_name, const mendmq_entry *merging, const mendmq_entry *existing) {
    (void)existing;
    if (!mendmq_str_eq_cstr(map_name, MENDMQ_RETAINED_MAP)) return mendmq_keep_existing();
    mendmq_retained m;
    if (!mendmq_retained_decode(merging->value, &m)) return mendmq_delete();
    /* Upper bound: 88 bytes of fixed fields and string headers; the
     * strings, the property section, the user properties' bytes and the
     * lookup each at most the value's length; 16 bytes of headers per user
     * property, which takes at least 5 bytes of the value. */
    uint32_t cap = 128 + 8 * merging->value.len;
    uint8_t *out = mendmq_scratch(cap), *p = out;
    if (out == 0) return mendmq_fail("out of memory");
    p = put_u32(p, m.qos);
    p = put_u32(p, m.retain);
    p = put_u32(p, m.packet_id);
    p = put_u32(p, m.has_payload_format);
    p = put_u32(p, m.payload_format);
    p = put_u32(p, m.has_message_expiry);
    p = put_u32(p, m.message_expiry);
    p = put_str(p, 1, m.topic);
    p = put_str(p, 1, m.payload);
    p = put_str(p, m.has_content_type, m.content_type);
    p = put_str(p, m.has_response_topic, m.response_topic);
    p = put_str(p, m.has_correlation_data, m.correlation_data);
    p = put_str(p, 1, m.properties);
    uint32_t it = 0, count = 0;
    mendmq_str k, v;
    uint8_t *countp = p;
    p += 4;
    while (mendmq_retained_next_user_property(&m, &it, &k, &v)) {
        p = put_str(p, 1, k);
        p = put_str(p, 1, v);
        count++;
    }
    mendmq_store_u32(countp, count);
    mendmq_str found = {0, 0};
    uint32_t has = (uint32_t)mendmq_retained_user_property(&m, "k", &found);
    p = put_str(p, has, found);
    mendmq_entry e = *merging;
    e.value.ptr = out;
    e.value.len = (uint32_t)(p - out);
    return mendmq_put(&e);
}

MENDMQ_POLICY(merge)
