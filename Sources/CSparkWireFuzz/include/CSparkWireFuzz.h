// libFuzzer's driver entry point, for the SparkWire fuzz target's main (see SparkWireFuzz.swift).
// Declared only: libFuzzer defines it when the target is built with -sanitize=fuzzer.
#ifndef CSPARKWIREFUZZ_H
#define CSPARKWIREFUZZ_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
