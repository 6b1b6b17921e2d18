/* sitegen PAGES OUT [RENDERER]: a static site from a folder of Markdown.
 *
 * Reads every PAGES/NAME.md (in name order), has each rendered to HTML by
 * the export "render" of the module RENDERER (default /render.wasm) through
 * Kiln's memoized calls, and writes OUT/NAME.html for each page and
 * OUT/index.html listing the pages by title. All pages are sent off before
 * the first answer is awaited, so they render in parallel; a page whose
 * text did not change since an earlier build is answered from Kiln's cache.
 */
#include <dirent.h>
#include <errno.h>
#include <kiln.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SITE_NAME "Tidewater"

typedef struct {
    char *name;  /* NAME of NAME.md */
    char *title; /* HTML-escaped */
    uint32_t handle;
} page;

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "sitegen: %s: %s\n", what, detail);
    exit(1);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail(path, strerror(errno));
    size_t cap = 4096, n = 0, got;
    char *data = malloc(cap);
    while (data && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) data = realloc(data, cap *= 2);
    }
    if (!data || ferror(f)) fail(path, "cannot read it");
    fclose(f);
    *len = n;
    return data;
}

static FILE *create(const char *folder, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", folder, name);
    FILE *f = fopen(path, "w");
    if (!f) fail(path, strerror(errno));
    return f;
}

static void close_file(FILE *f, const char *name) {
    if (ferror(f) || fclose(f) != 0) fail(name, "cannot write it");
}

static void head(FILE *f, const char *title) {
    fprintf(f,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>%s</title>\n</head>\n<body>\n<nav><a href=\"index.html\">" SITE_NAME
            "</a></nav>\n<main>\n",
            title);
}

static void foot(FILE *f) { fputs("</main>\n</body>\n</html>\n", f); }

static int by_name(const void *a, const void *b) {
    return strcmp(((const page *)a)->name, ((const page *)b)->name);
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: sitegen PAGES OUT [RENDERER]\n");
        return 2;
    }
    const char *pages_dir = argv[1], *out = argv[2];
    const char *renderer = argc > 3 ? argv[3] : "/render.wasm";

    DIR *dir = opendir(pages_dir);
    if (!dir) fail(pages_dir, strerror(errno));
    page *pages = NULL;
    size_t count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        size_t len = strlen(entry->d_name);
        if (entry->d_name[0] == '.' || len <= 3 || strcmp(entry->d_name + len - 3, ".md") != 0)
            continue;
        if (strcmp(entry->d_name, "index.md") == 0)
            fail("index.md", "the index page is made by sitegen; rename this page");
        pages = realloc(pages, (count + 1) * sizeof *pages);
        if (!pages) fail(pages_dir, "out of memory");
        pages[count].name = strndup(entry->d_name, len - 3);
        pages[count].title = NULL;
        count++;
    }
    closedir(dir);
    if (count == 0) fail(pages_dir, "no .md pages");
    qsort(pages, count, sizeof *pages, by_name);

    /* Send every page off first: the calls run while we wait for the first. */
    for (size_t i = 0; i < count; i++) {
        char path[1024];
        size_t len;
        snprintf(path, sizeof path, "%s/%s.md", pages_dir, pages[i].name);
        char *text = read_file(path, &len);
        int err = kiln_call_begin(renderer, "render", text, len, &pages[i].handle);
        if (err) fail(renderer, strerror(err));
        free(text);
    }

    if (mkdir(out, 0755) != 0 && errno != EEXIST) fail(out, strerror(errno));
    int failed = 0;
    for (size_t i = 0; i < count; i++) {
        char *result = NULL;
        size_t len = 0;
        int status = kiln_call_end(pages[i].handle, (void **)&result, &len);
        if (status != 0) {
            fprintf(stderr, "sitegen: rendering %s.md failed (%s %d)\n", pages[i].name,
                    status < 0 ? "error" : "status", status < 0 ? -status : status);
            free(result);
            failed = 1;
            continue;
        }
        /* "TITLE\nHTML"; a page without a title is listed by its name. */
        char *body = strchr(result, '\n');
        body = body ? (*body = '\0', body + 1) : result + len;
        pages[i].title = strdup(result[0] ? result : pages[i].name);

        char file[512];
        snprintf(file, sizeof file, "%s.html", pages[i].name);
        FILE *f = create(out, file);
        head(f, pages[i].title);
        fputs(body, f);
        foot(f);
        close_file(f, file);
        free(result);
    }
    if (failed) return 1;

    FILE *index = create(out, "index.html");
    head(index, SITE_NAME);
    fputs("<h1>" SITE_NAME "</h1>\n<ul>\n", index);
    for (size_t i = 0; i < count; i++)
        fprintf(index, "<li><a href=\"%s.html\">%s</a></li>\n", pages[i].name, pages[i].title);
    fputs("</ul>\n", index);
    foot(index);
    close_file(index, "index.html");
    printf("sitegen: %zu pages\n", count);
    return 0;
}
