#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "csv.h"
#include "error.h"

typedef struct {
    const char *name;
    void (*run)(const table *t, const char *argument, FILE *out);
    const char *argument;
    const char *help;
} command;

static const command COMMANDS[] = {
    {"stats", cmd_stats, "COLUMN", "count, min, max, sum, mean, median and stddev"},
    {"count", cmd_count, "COLUMN", "how often each value occurs, most frequent first"},
    {"select", cmd_select, "COL,COL...", "only these columns, in this order"},
    {"sort", cmd_sort, "[-]COLUMN", "rows ordered by a column (numbers as numbers)"},
};

static void usage(FILE *out) {
    fputs("usage: tally COMMAND FILE.csv ARGUMENT\n\ncommands:\n", out);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(out, "  %-6s %-11s %s\n", COMMANDS[i].name, COMMANDS[i].argument,
                COMMANDS[i].help);
}

int run_cli(int argc, char **argv) {
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 4) {
        usage(stderr);
        return 2;
    }
    const command *chosen = NULL;
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (strcmp(argv[1], COMMANDS[i].name) == 0)
            chosen = &COMMANDS[i];
    if (!chosen)
        fail("unknown command '%s' (try --help)", argv[1]);
    FILE *in = fopen(argv[2], "rb");
    if (!in)
        fail("cannot open %s", argv[2]);
    table t;
    csv_read(in, argv[2], &t);
    fclose(in);
    chosen->run(&t, argv[3], stdout);
    table_free(&t);
    return 0;
}
