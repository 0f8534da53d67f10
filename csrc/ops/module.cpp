// The empty Python module `fastcka._C`: importing it loads this library, whose static initialisers register the ops
// with the dispatcher (no pybind11, no libtorch_python: the wheel is abi3).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
