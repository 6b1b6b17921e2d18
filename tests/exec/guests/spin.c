/* Counts forever: stopped only by fuel or the wall-clock timeout. */
#include <stdio.h>

int main(void) {
    volatile unsigned long n = 0;
    for (;;) n++;
}
