/* render: one page of Markdown to an HTML fragment.
 *
 * Linked as a reactor whose one export, render(), is called by sitegen
 * through Kiln's memoized calls: its input is the page's text, its output
 * the page's title (HTML-escaped, one line; empty if the page has no "# "
 * heading), a newline, and the page's body as HTML.
 *
 * The Markdown it knows: "#" to "######" headings; paragraphs (lines until
 * a blank one); bullet lists ("- " or "* " items, indented lines continue
 * an item); and inside those, *emphasis* or _emphasis_, **strong**,
 * `code` and [links](url). A backslash makes the next punctuation mark
 * plain text. Anything else is text, escaped for HTML.
 */
#include <ctype.h>
#include <kiln.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len, cap;
} buffer;

static void put(buffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) abort();
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void put_str(buffer *b, const char *s) { put(b, s, strlen(s)); }

static void put_escaped(buffer *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': put_str(b, "&amp;"); break;
        case '<': put_str(b, "&lt;"); break;
        case '>': put_str(b, "&gt;"); break;
        case '"': put_str(b, "&quot;"); break;
        default: put(b, s + i, 1);
        }
    }
}

/* Where the run of `mark` (one or two characters) that closes a span
 * opened just before `from` starts, or -1. The span must not be empty and
 * must not end in a space; an underscore only closes at the end of a word. */
static long closing(const char *s, size_t n, size_t from, const char *mark) {
    size_t m = strlen(mark);
    for (size_t j = from + 1; j + m <= n; j++) {
        if (memcmp(s + j, mark, m) != 0 || s[j - 1] == ' ' || s[j - 1] == '\n') continue;
        if (m == 1 && j + 1 < n && s[j + 1] == mark[0]) {
            j++; /* half of a double mark: not ours */
            continue;
        }
        if (mark[0] == '_' && j + m < n && isalnum((unsigned char)s[j + m])) continue;
        return (long)j;
    }
    return -1;
}

/* The inline markup of s[0..n) as HTML, or (plain) as its text alone. */
static void render_inline(buffer *b, const char *s, size_t n, int plain) {
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '\\' && i + 1 < n && ispunct((unsigned char)s[i + 1])) {
            put_escaped(b, s + i + 1, 1);
            i += 2;
            continue;
        }
        if (c == '`') {
            const char *end = memchr(s + i + 1, '`', n - i - 1);
            if (end) {
                size_t len = (size_t)(end - (s + i + 1));
                if (!plain) put_str(b, "<code>");
                put_escaped(b, s + i + 1, len);
                if (!plain) put_str(b, "</code>");
                i += len + 2;
                continue;
            }
        }
        if ((c == '*' || c == '_') && i + 1 < n && s[i + 1] != ' ') {
            int at_word_start = i == 0 || !isalnum((unsigned char)s[i - 1]);
            int strong = s[i + 1] == c;
            char mark[3] = {c, strong ? c : '\0', '\0'};
            size_t open = strong ? 2 : 1;
            long end = (c == '*' || at_word_start) && i + open < n && s[i + open] != ' '
                           ? closing(s, n, i + open, mark)
                           : -1;
            if (end > 0) {
                const char *tag = strong ? "strong" : "em";
                if (!plain) {
                    put_str(b, "<");
                    put_str(b, tag);
                    put_str(b, ">");
                }
                render_inline(b, s + i + open, (size_t)end - i - open, plain);
                if (!plain) {
                    put_str(b, "</");
                    put_str(b, tag);
                    put_str(b, ">");
                }
                i = (size_t)end + open;
                continue;
            }
        }
        if (c == '[') {
            const char *close = memchr(s + i + 1, ']', n - i - 1);
            size_t text_end = close ? (size_t)(close - s) : n;
            if (close && text_end + 1 < n && s[text_end + 1] == '(') {
                const char *paren = memchr(s + text_end + 2, ')', n - text_end - 2);
                if (paren) {
                    size_t url = text_end + 2, url_end = (size_t)(paren - s);
                    if (!plain) {
                        put_str(b, "<a href=\"");
                        put_escaped(b, s + url, url_end - url);
                        put_str(b, "\">");
                    }
                    render_inline(b, s + i + 1, text_end - i - 1, plain);
                    if (!plain) put_str(b, "</a>");
                    i = url_end + 1;
                    continue;
                }
            }
        }
        put_escaped(b, s + i, 1);
        i++;
    }
}

enum block { NONE, PARAGRAPH, ITEM };

typedef struct {
    buffer html, title, text; /* text: the paragraph or list item being read */
    enum block open;
    int in_list;
} page;

/* Write out the paragraph or list item being read. */
static void finish_block(page *p) {
    if (p->open == PARAGRAPH) {
        put_str(&p->html, "<p>");
        render_inline(&p->html, p->text.data, p->text.len, 0);
        put_str(&p->html, "</p>\n");
    } else if (p->open == ITEM) {
        put_str(&p->html, "<li>");
        render_inline(&p->html, p->text.data, p->text.len, 0);
        put_str(&p->html, "</li>\n");
    }
    p->open = NONE;
    p->text.len = 0;
}

static void finish_list(page *p) {
    finish_block(p);
    if (p->in_list) put_str(&p->html, "</ul>\n");
    p->in_list = 0;
}

static void add_text(page *p, enum block kind, const char *s, size_t n) {
    if (p->open != kind) {
        finish_block(p);
        p->open = kind;
    } else {
        put(&p->text, "\n", 1);
    }
    put(&p->text, s, n);
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return 0;
    return 1;
}

static void render_line(page *p, const char *line, size_t n) {
    size_t indent = 0;
    while (indent < n && line[indent] == ' ') indent++;
    if (is_blank(line, n)) {
        finish_list(p);
        return;
    }
    size_t level = 0;
    while (level < n && line[level] == '#') level++;
    if (level >= 1 && level <= 6 && level < n && line[level] == ' ') {
        const char *text = line + level + 1;
        size_t len = n - level - 1;
        while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '#')) len--;
        char tag[8] = {'<', 'h', (char)('0' + level), '>', '\0'};
        finish_list(p);
        put_str(&p->html, tag);
        render_inline(&p->html, text, len, 0);
        put_str(&p->html, "</");
        put_str(&p->html, tag + 1);
        put_str(&p->html, "\n");
        if (level == 1 && p->title.len == 0) render_inline(&p->title, text, len, 1);
        return;
    }
    if (indent < 4 && indent + 1 < n && (line[indent] == '-' || line[indent] == '*') &&
        line[indent + 1] == ' ') {
        finish_block(p);
        if (!p->in_list) put_str(&p->html, "<ul>\n");
        p->in_list = 1;
        p->open = NONE;
        add_text(p, ITEM, line + indent + 2, n - indent - 2);
        return;
    }
    if (p->open == ITEM && indent > 0) { /* an item's next line */
        add_text(p, ITEM, line + indent, n - indent);
        return;
    }
    if (p->in_list) finish_list(p);
    add_text(p, PARAGRAPH, line + indent, n - indent);
}

/* The memoized call: Markdown in, "TITLE\nHTML" out. */
void render(void) {
    size_t len = 0;
    char *source = kiln_input(&len);
    if (!source) abort();
    page p = {0};
    put_str(&p.html, "");
    put_str(&p.title, "");
    put_str(&p.text, "");
    size_t start = 0;
    while (start < len) {
        const char *nl = memchr(source + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - source) : len;
        size_t n = end - start;
        if (n > 0 && source[start + n - 1] == '\r') n--;
        render_line(&p, source + start, n);
        start = end + 1;
    }
    finish_list(&p);
    kiln_output(p.title.data, p.title.len);
    kiln_output("\n", 1);
    kiln_output(p.html.data, p.html.len);
    free(p.html.data);
    free(p.title.data);
    free(p.text.data);
    free(source);
}
