// The op schemas of csrc/ops/*.cpp, defined a second time for the emulation's own library: `fastcka` is renamed
// fastcka_emu in this translation unit only, so the schema strings have one source.
#define fastcka fastcka_emu
#include "center_gram.cpp"
#include "frequency_spectrum.cpp"
#include "kernel_hsic.cpp"
#include "linear_hsic.cpp"
#undef fastcka
