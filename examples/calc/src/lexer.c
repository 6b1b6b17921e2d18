#include <ctype.h>

#include "calc.h"

void lexer_init(struct lexer *lx, const char *text) {
    lx->text = text;
    lx->pos = 0;
}

struct token lexer_next(struct lexer *lx) {
    struct token t = {TOK_END, 0};
    while (isspace((unsigned char)lx->text[lx->pos])) lx->pos++;
    char c = lx->text[lx->pos];
    if (c == '\0') return t;
    lx->pos++;
    switch (c) {
    case '+': t.kind = TOK_PLUS; return t;
    case '-': t.kind = TOK_MINUS; return t;
    case '*': t.kind = TOK_STAR; return t;
    case '/': t.kind = TOK_SLASH; return t;
    case '(': t.kind = TOK_LPAREN; return t;
    case ')': t.kind = TOK_RPAREN; return t;
    default: break;
    }
    if (isdigit((unsigned char)c)) {
        t.kind = TOK_NUMBER;
        t.value = c - '0';
        while (isdigit((unsigned char)lx->text[lx->pos])) t.value = t.value * 10 + (lx->text[lx->pos++] - '0');
        return t;
    }
    t.kind = TOK_ERROR;
    return t;
}
