/*
 * Optional accelerator for skqueue's hot path: one call that checks a descriptor's
 * identity and reads its buffer occupancy.  skqueue/filters/fd.py has the pure-Python
 * equivalent (os.fstat + fcntl.ioctl), which is used when this module is not built and
 * is tested against it.
 *
 * probe(fd, dev, ino, op) -> int
 *     op 0: FIONREAD (bytes readable)   op 1: SIOCOUTQ (bytes unsent)   op 2: identity only
 *     returns >= 0 on success, -1 if fd is closed or no longer (dev, ino), -2 if the
 *     ioctl is not supported by this kind of file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/sockios.h>

static PyObject *
probe(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "probe(fd, dev, ino, op) takes 4 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    unsigned long long dev = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long ino = PyLong_AsUnsignedLongLong(args[2]);
    long op = PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    struct stat st;
    if (fstat((int)fd, &st) < 0 || (unsigned long long)st.st_dev != dev ||
        (unsigned long long)st.st_ino != ino)
        return PyLong_FromLong(-1);
    if (op == 2)
        return PyLong_FromLong(0);
    int n = 0;
    if (ioctl((int)fd, op == 0 ? FIONREAD : SIOCOUTQ, &n) < 0)
        return PyLong_FromLong(errno == EBADF ? -1 : -2);
    return PyLong_FromLong(n);
}

static PyMethodDef methods[] = {
    {"probe", (PyCFunction)(void (*)(void))probe, METH_FASTCALL,
     "probe(fd, dev, ino, op) -> bytes (op 0 FIONREAD, 1 SIOCOUTQ, 2 identity); -1 gone; -2 n/a"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "skqueue._speedups", "skqueue hot-path helpers", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
