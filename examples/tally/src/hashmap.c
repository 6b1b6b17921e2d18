#include "hashmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static uint32_t fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

void hashmap_init(hashmap *m) {
    m->cap = 64;
    m->size = 0;
    m->slots = calloc(m->cap, sizeof(counter));
    if (!m->slots)
        fail("out of memory");
}

void hashmap_free(hashmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = m->size = 0;
}

static counter *find(counter *slots, size_t cap, const char *key) {
    size_t i = fnv1a(key) & (cap - 1);
    while (slots[i].key && strcmp(slots[i].key, key) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

static void grow(hashmap *m) {
    size_t cap = m->cap * 2;
    counter *slots = calloc(cap, sizeof(counter));
    if (!slots)
        fail("out of memory");
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key)
            *find(slots, cap, m->slots[i].key) = m->slots[i];
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
}

void hashmap_add(hashmap *m, const char *key) {
    if ((m->size + 1) * 4 > m->cap * 3)
        grow(m);
    counter *slot = find(m->slots, m->cap, key);
    if (!slot->key) {
        slot->key = key;
        m->size++;
    }
    slot->count++;
}

counter *hashmap_items(const hashmap *m) {
    counter *items = xmalloc(m->size * sizeof(counter));
    size_t n = 0;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key)
            items[n++] = m->slots[i];
    return items;
}
