/* Recursive descent: expr := term (('+'|'-') term)*, term := factor (('*'|'/') factor)*,
 * factor := number | '-' factor | '(' expr ')'. */
#include "calc.h"

struct parser {
    struct lexer lx;
    struct token tok;
    const char *error;
};

static void advance(struct parser *p) { p->tok = lexer_next(&p->lx); }

static long expr(struct parser *p);

static long factor(struct parser *p) {
    if (p->error) return 0;
    if (p->tok.kind == TOK_NUMBER) {
        long v = p->tok.value;
        advance(p);
        return v;
    }
    if (p->tok.kind == TOK_MINUS) {
        advance(p);
        return -factor(p);
    }
    if (p->tok.kind == TOK_LPAREN) {
        advance(p);
        long v = expr(p);
        if (p->tok.kind != TOK_RPAREN) {
            p->error = "expected ')'";
            return 0;
        }
        advance(p);
        return v;
    }
    p->error = p->tok.kind == TOK_END ? "unexpected end of input" : "unexpected token";
    return 0;
}

static long term(struct parser *p) {
    long v = factor(p);
    while (!p->error && (p->tok.kind == TOK_STAR || p->tok.kind == TOK_SLASH)) {
        enum token_kind op = p->tok.kind;
        advance(p);
        long rhs = factor(p);
        if (op == TOK_SLASH && rhs == 0) {
            p->error = "division by zero";
            return 0;
        }
        v = op == TOK_STAR ? v * rhs : v / rhs;
    }
    return v;
}

static long expr(struct parser *p) {
    long v = term(p);
    while (!p->error && (p->tok.kind == TOK_PLUS || p->tok.kind == TOK_MINUS)) {
        enum token_kind op = p->tok.kind;
        advance(p);
        long rhs = term(p);
        v = op == TOK_PLUS ? v + rhs : v - rhs;
    }
    return v;
}

int evaluate(const char *text, long *result, const char **error) {
    struct parser p = {.error = 0};
    lexer_init(&p.lx, text);
    advance(&p);
    long v = expr(&p);
    if (!p.error && p.tok.kind != TOK_END) p.error = "trailing input";
    if (p.error) {
        *error = p.error;
        return -1;
    }
    *result = v;
    return 0;
}
