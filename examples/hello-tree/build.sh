#!/bin/sh
# Builds the greeter with the host compiler (later Kiln examples do this in a sandbox).
set -e
cc -O2 -o greet src/main.c src/greet.c
