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
#include <structmember.h>

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

/*
 * read_event(cls, fd, dev, ino, ident, filter, flags, fflags, udata) -> event | int
 *
 * The scan's hot path for EVFILT_READ on sockets and pipes: probe(fd, dev, ino, 0) and,
 * when bytes are readable, a new ``cls`` instance (a kevent with __slots__) with its six
 * fields set.  Returns the probe result (an int <= 0) when there is nothing to deliver.
 * ``bind(cls)`` must have been called once to learn the slot offsets.
 */
static Py_ssize_t off[6];   /* ident, filter, flags, fflags, data, udata */
static PyTypeObject *bound_base = NULL;

static PyObject *
bind(PyObject *self, PyObject *cls)
{
    static const char *names[6] = {"ident", "filter", "flags", "fflags", "data", "udata"};
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind() needs the kevent class");
        return NULL;
    }
    for (int i = 0; i < 6; i++) {
        PyObject *d = PyObject_GetAttrString(cls, names[i]);
        if (d == NULL)
            return NULL;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "%s is not a slot", names[i]);
            return NULL;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "%s is not an object slot", names[i]);
            return NULL;
        }
        off[i] = m->offset;
        Py_DECREF(d);
    }
    Py_XDECREF(bound_base);
    Py_INCREF(cls);
    bound_base = (PyTypeObject *)cls;
    Py_RETURN_NONE;
}

static PyObject *
read_event(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "read_event() takes 9 arguments");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (bound_base == NULL || !PyType_Check(args[0]) ||
        !PyType_IsSubtype(cls, bound_base)) {
        PyErr_SetString(PyExc_TypeError, "read_event(): class not bound");
        return NULL;
    }
    long fd = PyLong_AsLong(args[1]);
    unsigned long long dev = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long ino = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    struct stat st;
    if (fstat((int)fd, &st) < 0 || (unsigned long long)st.st_dev != dev ||
        (unsigned long long)st.st_ino != ino)
        return PyLong_FromLong(-1);
    int n = 0;
    if (ioctl((int)fd, FIONREAD, &n) < 0)
        return PyLong_FromLong(errno == EBADF ? -1 : -2);
    if (n <= 0)
        return PyLong_FromLong(n);
    PyObject *ev = cls->tp_alloc(cls, 0);
    if (ev == NULL)
        return NULL;
    PyObject *data = PyLong_FromLong(n);
    if (data == NULL) {
        Py_DECREF(ev);
        return NULL;
    }
    PyObject *vals[6] = {args[4], args[5], args[6], args[7], data, args[8]};
    for (int i = 0; i < 6; i++) {
        PyObject **slot = (PyObject **)((char *)ev + off[i]);
        if (i != 4)
            Py_INCREF(vals[i]);
        *slot = vals[i];   /* fresh object: slots are NULL */
    }
    return ev;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)bind, METH_O, "bind(kevent_class): learn the slot offsets"},
    {"read_event", (PyCFunction)(void (*)(void))read_event, METH_FASTCALL,
     "read_event(cls, fd, dev, ino, ident, filter, flags, fflags, udata) -> event | int"},
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
