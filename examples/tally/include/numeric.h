/* Numbers in cells: strict parsing and fixed formatting. */
#ifndef TALLY_NUMERIC_H
#define TALLY_NUMERIC_H

/* 1 and *out set if S is a whole decimal number (sign, digits, optional
 * fraction and exponent, nothing else); 0 otherwise. */
int parse_number(const char *s, double *out);
/* Square root by Newton's method (no libm needed). */
double square_root(double x);
/* X with four decimals, "-0.0000" written as "0.0000"; into BUF (>= 64). */
const char *format_number(double x, char *buf);

#endif
