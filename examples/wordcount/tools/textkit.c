/* textkit: the small text tool the wordcount example runs as WebAssembly.
 *
 *   textkit chapters INDEX OUT   chapter names listed in INDEX -> JSON list
 *   textkit count IN OUT         word counts of IN, one "word count" line each,
 *                                sorted by word; lines starting with '#' are
 *                                comments and are not counted
 *   textkit merge OUT IN...      sum of several count files; the 20 most
 *                                frequent words, most frequent first
 *
 * Words are runs of ASCII letters and digits, lower-cased.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct word { char *text; long count; };
struct table { struct word *items; size_t len, cap; };

static void die(const char *what, const char *path) {
    fprintf(stderr, "textkit: %s: %s\n", what, path);
    exit(1);
}

static FILE *open_or_die(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) die(mode[0] == 'r' ? "cannot read" : "cannot write", path);
    return f;
}

static void add(struct table *t, const char *text, long n) {
    for (size_t i = 0; i < t->len; i++)
        if (strcmp(t->items[i].text, text) == 0) { t->items[i].count += n; return; }
    if (t->len == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->items = realloc(t->items, t->cap * sizeof *t->items);
        if (!t->items) die("out of memory", text);
    }
    t->items[t->len].text = strdup(text);
    t->items[t->len++].count = n;
}

static int by_word(const void *a, const void *b) {
    return strcmp(((const struct word *)a)->text, ((const struct word *)b)->text);
}

static int by_count(const void *a, const void *b) {
    const struct word *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->text, y->text);
}

static int chapters(const char *index, const char *out_path) {
    FILE *in = open_or_die(index, "r"), *out = open_or_die(out_path, "w");
    char line[512];
    int first = 1;
    fputc('[', out);
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\r\n")] = 0;
        char *name = line;
        while (isspace((unsigned char)*name)) name++;
        if (!*name || *name == '#') continue;
        for (char *c = name; *c; c++)
            if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_') die("bad chapter name", name);
        fprintf(out, "%s\"%s\"", first ? "" : ", ", name);
        first = 0;
    }
    fputs("]\n", out);
    fclose(in);
    return fclose(out) != 0;
}

static int count(const char *in_path, const char *out_path) {
    FILE *in = open_or_die(in_path, "r");
    struct table t = {0};
    char line[4096], word[128];
    while (fgets(line, sizeof line, in)) {
        if (line[0] == '#') continue;
        size_t n = 0;
        for (char *c = line;; c++) {
            if (isalnum((unsigned char)*c)) {
                if (n < sizeof word - 1) word[n++] = (char)tolower((unsigned char)*c);
            } else {
                if (n) { word[n] = 0; add(&t, word, 1); n = 0; }
                if (!*c) break;
            }
        }
    }
    fclose(in);
    qsort(t.items, t.len, sizeof *t.items, by_word);
    FILE *out = open_or_die(out_path, "w");
    for (size_t i = 0; i < t.len; i++) fprintf(out, "%s %ld\n", t.items[i].text, t.items[i].count);
    return fclose(out) != 0;
}

static int merge(const char *out_path, int n, char **inputs) {
    struct table t = {0};
    char text[128];
    long c;
    for (int i = 0; i < n; i++) {
        FILE *in = open_or_die(inputs[i], "r");
        while (fscanf(in, "%127s %ld", text, &c) == 2) add(&t, text, c);
        fclose(in);
    }
    qsort(t.items, t.len, sizeof *t.items, by_count);
    FILE *out = open_or_die(out_path, "w");
    long total = 0;
    for (size_t i = 0; i < t.len; i++) total += t.items[i].count;
    fprintf(out, "%ld words, %zu different, in %d chapters\n", total, t.len, n);
    for (size_t i = 0; i < t.len && i < 20; i++)
        fprintf(out, "%4zu. %-16s %ld\n", i + 1, t.items[i].text, t.items[i].count);
    return fclose(out) != 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "chapters") == 0) return chapters(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "count") == 0) return count(argv[2], argv[3]);
    if (argc >= 3 && strcmp(argv[1], "merge") == 0) return merge(argv[2], argc - 3, argv + 3);
    fprintf(stderr, "usage: textkit chapters INDEX OUT | count IN OUT | merge OUT IN...\n");
    return 2;
}
