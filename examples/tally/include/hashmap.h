/* Counting distinct strings: an open-addressing hash map (FNV-1a). */
#ifndef TALLY_HASHMAP_H
#define TALLY_HASHMAP_H

#include <stddef.h>

typedef struct {
    const char *key; /* NULL: free slot; keys are borrowed, not copied */
    size_t count;
} counter;

typedef struct {
    counter *slots;
    size_t cap;
    size_t size;
} hashmap;

void hashmap_init(hashmap *m);
void hashmap_free(hashmap *m);
void hashmap_add(hashmap *m, const char *key);
/* The used slots, in no particular order, into a new array of m->size. */
counter *hashmap_items(const hashmap *m);

#endif
