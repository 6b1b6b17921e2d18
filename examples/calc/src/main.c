/* calc FILE: evaluates each line of FILE, printing "expression = value". */
#include <stdio.h>
#include <string.h>

#include "calc.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: calc FILE\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "r");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    char line[1024];
    int failures = 0;
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        long value;
        const char *error;
        if (evaluate(line, &value, &error) == 0) {
            printf("%s = %ld\n", line, value);
        } else {
            printf("%s : error: %s\n", line, error);
            failures++;
        }
    }
    fclose(in);
    return failures ? 1 : 0;
}
