/*
 * mendmq_retained.h — read retained MQTT messages in a C merge policy.
 *
 * For the map "$retained" every EntryView's value is a retained message
 * encoded as a complete MQTT 5.0 PUBLISH packet (sdk/ABI.md §8): fixed
 * header, Remaining Length, topic, packet identifier (QoS > 0), properties,
 * payload. The key is the topic; creation_time and expiration_time are the
 * message's creation and expiry (Unix ms). This header decodes the value
 * without copying: every mendmq_str points into the entry (valid until the
 * policy returns). It agrees with the Go SDK's sdk.DecodeRetained on every
 * input (plugins' FuzzCRetainedMatchesGo), which agrees with the broker.
 *
 *   #include "mendmq_policy.h"
 *   #include "mendmq_retained.h"
 *
 *   static mendmq_result merge(const mendmq_str map_name, const mendmq_entry *merging,
 *                              const mendmq_entry *existing) {
 *       mendmq_retained m;
 *       if (existing == 0) return mendmq_take_merging();
 *       if (!mendmq_str_eq_cstr(map_name, "$retained")) return mendmq_keep_existing();
 *       if (!mendmq_retained_decode(merging->value, &m)) return mendmq_fail("not a retained message");
 *       ... m.qos, m.payload, m.content_type, mendmq_retained_user_property(&m, "origin", &v) ...
 *   }
 */
#ifndef MENDMQ_RETAINED_H
#define MENDMQ_RETAINED_H

#include "mendmq_policy.h"

#define MENDMQ_RETAINED_MAP "$retained"

/* MQTT 5.0 PUBLISH property identifiers. */
#define MENDMQ_PROP_PAYLOAD_FORMAT 0x01u
#define MENDMQ_PROP_MESSAGE_EXPIRY_INTERVAL 0x02u
#define MENDMQ_PROP_CONTENT_TYPE 0x03u
#define MENDMQ_PROP_RESPONSE_TOPIC 0x08u
#define MENDMQ_PROP_CORRELATION_DATA 0x09u
#define MENDMQ_PROP_SUBSCRIPTION_IDENTIFIER 0x0Bu
#define MENDMQ_PROP_TOPIC_ALIAS 0x23u
#define MENDMQ_PROP_USER_PROPERTY 0x26u

/* A decoded retained message. Fields named has_* say whether the property
 * is present; the mendmq_str fields of absent properties are {0, 0}. */
typedef struct mendmq_retained {
    mendmq_str topic;             /* equals the entry's key */
    uint32_t qos;                 /* 0, 1 or 2 */
    uint32_t retain;              /* the RETAIN flag, 0 or 1 */
    uint32_t packet_id;           /* 1 when qos > 0 (the broker's placeholder), else 0 */
    mendmq_str payload;           /* the application message */
    uint32_t has_payload_format;  /* property 0x01 present */
    uint32_t payload_format;      /* 0: bytes, 1: UTF-8 text */
    uint32_t has_message_expiry;  /* property 0x02 present */
    uint32_t message_expiry;      /* seconds; expiration_time = creation_time + 1000 * this */
    uint32_t has_content_type;    /* property 0x03 present */
    mendmq_str content_type;      /* UTF-8 */
    uint32_t has_response_topic;  /* property 0x08 present */
    mendmq_str response_topic;    /* UTF-8 */
    uint32_t has_correlation_data; /* property 0x09 present */
    mendmq_str correlation_data;  /* binary */
    mendmq_str properties;        /* the whole property section, without its length */
} mendmq_retained;

/* mendmq__varint reads an MQTT Variable Byte Integer of at most 4 bytes at
 * p[0..len); returns the bytes read, 0 when malformed. */
static inline uint32_t mendmq__varint(const uint8_t *p, uint64_t len, uint64_t *v) {
    uint64_t x = 0;
    for (uint32_t i = 0; i < 4 && i < len; i++) {
        x |= (uint64_t)(p[i] & 0x7fu) << (7u * i);
        if ((p[i] & 0x80u) == 0) {
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

/* mendmq__utf8_ok: valid UTF-8 (as Go's utf8.Valid: no overlong forms, no
 * surrogates, nothing above U+10FFFF) without U+0000 [MQTT-1.5.4-1,2]. */
static inline int mendmq__utf8_ok(const uint8_t *s, uint32_t n) {
    uint32_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0) return 0;
        if (c < 0x80u) {
            i++;
            continue;
        }
        uint32_t need;
        uint8_t lo = 0x80u, hi = 0xBFu;
        if (c >= 0xC2u && c <= 0xDFu) need = 1;
        else if (c == 0xE0u) need = 2, lo = 0xA0u;
        else if (c >= 0xE1u && c <= 0xECu) need = 2;
        else if (c == 0xEDu) need = 2, hi = 0x9Fu;
        else if (c >= 0xEEu && c <= 0xEFu) need = 2;
        else if (c == 0xF0u) need = 3, lo = 0x90u;
        else if (c >= 0xF1u && c <= 0xF3u) need = 3;
        else if (c == 0xF4u) need = 3, hi = 0x8Fu;
        else return 0;
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (uint32_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80u || s[i + k] > 0xBFu) return 0;
        i += need + 1;
    }
    return 1;
}

/* mendmq__binary reads Binary Data (uint16 big-endian length + bytes) at
 * p[*off..len); string != 0 also requires mendmq__utf8_ok. 1 on success. */
static inline int mendmq__binary(const uint8_t *p, uint64_t len, uint64_t *off, mendmq_str *out, int string) {
    if (*off > len || len - *off < 2) return 0;
    uint64_t n = ((uint64_t)p[*off] << 8) | p[*off + 1];
    if (len - *off - 2 < n) return 0;
    out->ptr = p + *off + 2;
    out->len = (uint32_t)n;
    if (string && !mendmq__utf8_ok(out->ptr, out->len)) return 0;
    *off += 2 + n;
    return 1;
}

/* mendmq__property reads the property at props[*off..len): its id and its
 * value (for 0x26 both strings with their length prefixes). 1 on success,
 * 0 for an id PUBLISH does not carry or a value that is cut or not UTF-8. */
static inline int mendmq__property(const uint8_t *p, uint64_t len, uint64_t *off, uint32_t *id, mendmq_str *val) {
    if (*off >= len) return 0;
    *id = p[(*off)++];
    uint64_t start = *off, fixed = 0, v;
    mendmq_str tmp;
    switch (*id) {
    case MENDMQ_PROP_PAYLOAD_FORMAT: fixed = 1; break;
    case MENDMQ_PROP_MESSAGE_EXPIRY_INTERVAL: fixed = 4; break;
    case MENDMQ_PROP_TOPIC_ALIAS: fixed = 2; break;
    case MENDMQ_PROP_CONTENT_TYPE:
    case MENDMQ_PROP_RESPONSE_TOPIC: return mendmq__binary(p, len, off, val, 1);
    case MENDMQ_PROP_CORRELATION_DATA: return mendmq__binary(p, len, off, val, 0);
    case MENDMQ_PROP_SUBSCRIPTION_IDENTIFIER: {
        uint32_t n = mendmq__varint(p + start, len - start, &v);
        if (n == 0) return 0;
        *off += n;
        val->ptr = p + start;
        val->len = n;
        return 1;
    }
    case MENDMQ_PROP_USER_PROPERTY:
        if (!mendmq__binary(p, len, off, &tmp, 1) || !mendmq__binary(p, len, off, &tmp, 1)) return 0;
        val->ptr = p + start;
        val->len = (uint32_t)(*off - start);
        return 1;
    default: return 0;
    }
    if (len - start < fixed) return 0;
    val->ptr = p + start;
    val->len = (uint32_t)fixed;
    *off += fixed;
    return 1;
}

/* mendmq_retained_decode decodes a "$retained" value into *m. It returns 1,
 * or 0 when the value is not a retained message as sdk/ABI.md §8 lays it
 * out (the same values sdk.DecodeRetained refuses): not a PUBLISH, QoS 3,
 * DUP with QoS 0, a
 * Remaining Length over 4 bytes or not equal to the bytes that follow, an
 * empty or non-UTF-8 topic, a missing or zero packet identifier with
 * QoS > 0, a property PUBLISH does not carry, a single-use property twice,
 * or any length running past the value. It never reads outside the value. */
static int mendmq_retained_decode(mendmq_str value, mendmq_retained *m) {
    const uint8_t *b = value.ptr;
    uint64_t len = value.len, off, rem, plen, seen = 0;
    uint32_t n;
    mendmq_retained z = {0};
    *m = z;
    if (len < 2) return 0;
    if ((b[0] >> 4) != 3u) return 0;
    m->qos = (b[0] >> 1) & 3u;
    if (m->qos == 3u) return 0;
    if (m->qos == 0 && (b[0] & 0x08u)) return 0; /* DUP with QoS 0 [MQTT-3.3.1-2] */
    m->retain = b[0] & 1u;
    n = mendmq__varint(b + 1, len - 1, &rem);
    if (n == 0 || rem != len - 1 - n) return 0;
    off = 1 + n;
    if (!mendmq__binary(b, len, &off, &m->topic, 1) || m->topic.len == 0) return 0;
    if (m->qos > 0) {
        if (len - off < 2) return 0;
        m->packet_id = ((uint32_t)b[off] << 8) | b[off + 1];
        if (m->packet_id == 0) return 0;
        off += 2;
    }
    n = mendmq__varint(b + off, len - off, &plen);
    if (n == 0 || plen > len - off - n) return 0;
    off += n;
    m->properties.ptr = b + off;
    m->properties.len = (uint32_t)plen;
    m->payload.ptr = b + off + plen;
    m->payload.len = (uint32_t)(len - off - plen);
    for (uint64_t p = 0; p < plen;) {
        uint32_t id;
        mendmq_str v;
        if (!mendmq__property(m->properties.ptr, plen, &p, &id, &v)) return 0;
        if (id != MENDMQ_PROP_USER_PROPERTY && id != MENDMQ_PROP_SUBSCRIPTION_IDENTIFIER) {
            if (seen & ((uint64_t)1 << id)) return 0;
            seen |= (uint64_t)1 << id;
        }
        switch (id) {
        case MENDMQ_PROP_PAYLOAD_FORMAT:
            m->has_payload_format = 1;
            m->payload_format = v.ptr[0];
            break;
        case MENDMQ_PROP_MESSAGE_EXPIRY_INTERVAL:
            m->has_message_expiry = 1;
            m->message_expiry = ((uint32_t)v.ptr[0] << 24) | ((uint32_t)v.ptr[1] << 16) |
                                ((uint32_t)v.ptr[2] << 8) | v.ptr[3];
            break;
        case MENDMQ_PROP_CONTENT_TYPE: m->has_content_type = 1, m->content_type = v; break;
        case MENDMQ_PROP_RESPONSE_TOPIC: m->has_response_topic = 1, m->response_topic = v; break;
        case MENDMQ_PROP_CORRELATION_DATA: m->has_correlation_data = 1, m->correlation_data = v; break;
        }
    }
    return 1;
}

/* mendmq_retained_next_user_property walks the user properties in order:
 *
 *   uint32_t it = 0;
 *   mendmq_str k, v;
 *   while (mendmq_retained_next_user_property(&m, &it, &k, &v)) { ... }
 *
 * It returns 1 and sets *key and *value for the next one, 0 after the last.
 * *it must start at 0 and is the caller's cursor. */
static int mendmq_retained_next_user_property(const mendmq_retained *m, uint32_t *it, mendmq_str *key,
                                              mendmq_str *value) {
    const uint8_t *p = m->properties.ptr;
    uint64_t len = m->properties.len, off = *it;
    while (off < len) {
        uint32_t id;
        mendmq_str v;
        if (!mendmq__property(p, len, &off, &id, &v)) return 0; /* decode checked it: not reached */
        if (id == MENDMQ_PROP_USER_PROPERTY) {
            uint64_t o = 0;
            mendmq__binary(v.ptr, v.len, &o, key, 0);
            mendmq__binary(v.ptr, v.len, &o, value, 0);
            *it = (uint32_t)off;
            return 1;
        }
    }
    *it = (uint32_t)off;
    return 0;
}

/* mendmq_retained_user_property finds the first user property named key (a
 * NUL-terminated string): 1 and *value set, or 0. */
static int mendmq_retained_user_property(const mendmq_retained *m, const char *key, mendmq_str *value) {
    uint32_t it = 0;
    mendmq_str k, v;
    while (mendmq_retained_next_user_property(m, &it, &k, &v)) {
        if (mendmq_str_eq_cstr(k, key)) {
            *value = v;
            return 1;
        }
    }
    return 0;
}

#endif /* MENDMQ_RETAINED_H */
