/* calc: evaluates integer arithmetic expressions, e.g. "2 * (3 + 4)". */
#ifndef CALC_H
#define CALC_H

enum token_kind { TOK_NUMBER, TOK_PLUS, TOK_MINUS, TOK_STAR, TOK_SLASH, TOK_LPAREN, TOK_RPAREN, TOK_END, TOK_ERROR };

struct token {
    enum token_kind kind;
    long value;
};

struct lexer {
    const char *text;
    unsigned long pos;
};

void lexer_init(struct lexer *lx, const char *text);
struct token lexer_next(struct lexer *lx);

/* Returns 0 and sets *result, or -1 and sets *error to a message. */
int evaluate(const char *text, long *result, const char **error);

#endif
