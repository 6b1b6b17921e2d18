/* The command line: `tally COMMAND FILE ARGUMENT`. */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

/* Run the command ARGV asks for; returns the exit status. */
int run_cli(int argc, char **argv);

#endif
