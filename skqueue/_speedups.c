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

/* The probe itself, shared by every entry point: >= 0 bytes (or 0 for op 2), -1 if fd is
 * closed or no longer (dev, ino), -2 if the ioctl does not apply to this file. */
static long
probe_fd(int fd, unsigned long long dev, unsigned long long ino, long op)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || (unsigned long long)st.st_dev != dev ||
        (unsigned long long)st.st_ino != ino)
        return -1;
    if (op == 2)
        return 0;
    int n = 0;
    if (ioctl(fd, op == 0 ? FIONREAD : SIOCOUTQ, &n) < 0)
        return errno == EBADF ? -1 : -2;
    return n;
}

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
    return PyLong_FromLong(probe_fd((int)fd, dev, ino, op));
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
    long n = probe_fd((int)fd, dev, ino, 0);
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

/*
 * deliver(batch, start, cls, q, out, requeue_rt, requeue_norm, owned, multi) -> int
 *
 * The common case of KqueueCore._collect, in C, for the knotes batch[start:]: a READ
 * knote on a socket or pipe (kn.fast) whose watch saw no EOF or error, that is neither
 * detached, disabled nor owned by another kevq, and has none of ONESHOT, CLEAR,
 * DISPATCH.  For each such knote, under its lock: identity check + FIONREAD, build the
 * event, then requeue it (legacy: claimed for the tail) or make ``q`` its owner (multi).
 * It stops at the first knote that needs the Python path and returns its index, so the
 * output order is exactly the Python loop's.  A plain knote with no bytes readable is
 * stale: it is marked inactive here, as the Python loop would, and skipped.
 * bind_knote(Knote, FdWatch) must have been called once.
 */
enum { K_LOCK, K_STATUS, K_FAST, K_HOOK, K_IDENT, K_FILTER, K_FLAGS, K_FFLAGS, K_UDATA,
       K_RT, K_QUEUED, K_OWNER, K_N };
enum { W_FD, W_DEV, W_INO, W_EOF, W_ERR, W_N };
static Py_ssize_t koff[K_N], woff[W_N];
static PyTypeObject *knote_type = NULL, *watch_type = NULL;
static PyObject *str_acquire = NULL, *str_release = NULL;

#define KN_ACTIVE 0x01
#define KN_DISABLED 0x04
#define KN_DETACHED 0x08
#define KN_PROCESSING 0x80
#define KN_WS 0x100
#define EV_ONESHOT_F 0x0010
#define EV_CLEAR_F 0x0020
#define EV_DISPATCH_F 0x0080

static int
learn(PyObject *cls, const char **names, int n, Py_ssize_t *offs)
{
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttrString(cls, names[i]);
        if (d == NULL)
            return -1;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "%s is not an object slot", names[i]);
            return -1;
        }
        offs[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
    }
    return 0;
}

static PyObject *
bind_knote(PyObject *self, PyObject *args)
{
    static const char *kn_names[K_N] = {"lock", "status", "fast", "hook", "ident", "filter",
                                         "flags", "fflags", "udata", "rt", "queued_on",
                                         "owner"};
    static const char *w_names[W_N] = {"fd", "dev", "ino", "eof", "err"};
    PyObject *kcls, *wcls;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &kcls, &PyType_Type, &wcls))
        return NULL;
    if (learn(kcls, kn_names, K_N, koff) < 0 || learn(wcls, w_names, W_N, woff) < 0)
        return NULL;
    Py_XSETREF(knote_type, (PyTypeObject *)Py_NewRef(kcls));
    Py_XSETREF(watch_type, (PyTypeObject *)Py_NewRef(wcls));
    if (str_acquire == NULL) {
        str_acquire = PyUnicode_InternFromString("acquire");
        str_release = PyUnicode_InternFromString("release");
        if (str_acquire == NULL || str_release == NULL)
            return NULL;
    }
    Py_RETURN_NONE;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static int
set_status(PyObject *kn, long v)
{
    PyObject *o = PyLong_FromLong(v);
    if (o == NULL)
        return -1;
    Py_XSETREF(SLOT(kn, koff[K_STATUS]), o);
    return 0;
}

static PyObject *
deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "deliver() takes 9 arguments");
        return NULL;
    }
    PyObject *batch = args[0];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    PyTypeObject *cls = (PyTypeObject *)args[2];
    PyObject *q = args[3], *out = args[4], *req_rt = args[5], *req_norm = args[6];
    PyObject *owned = args[7];
    int multi = PyObject_IsTrue(args[8]);
    if (i < 0 && PyErr_Occurred())
        return NULL;
    if (!PyList_Check(batch) || !PyList_Check(out) || !PyList_Check(req_rt) ||
        !PyList_Check(req_norm) || !PyList_Check(owned) || knote_type == NULL ||
        bound_base == NULL || !PyType_Check(args[2]) || !PyType_IsSubtype(cls, bound_base)) {
        PyErr_SetString(PyExc_TypeError, "deliver(): bad arguments or not bound");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (; i < n; i++) {
        PyObject *kn = PyList_GET_ITEM(batch, i);
        if (!Py_IS_TYPE(kn, knote_type) || SLOT(kn, koff[K_FAST]) != Py_True)
            break;
        PyObject *w = SLOT(kn, koff[K_HOOK]);
        if (w == NULL || !Py_IS_TYPE(w, watch_type) || SLOT(w, woff[W_EOF]) != Py_False ||
            SLOT(w, woff[W_ERR]) != Py_False)
            break;
        long flags = PyLong_AsLong(SLOT(kn, koff[K_FLAGS]));
        if (flags == -1 && PyErr_Occurred())
            return NULL;
        if (flags & (EV_ONESHOT_F | EV_CLEAR_F | EV_DISPATCH_F))
            break;
        PyObject *lock = SLOT(kn, koff[K_LOCK]);
        PyObject *r = PyObject_CallMethodNoArgs(lock, str_acquire);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
        int take = 1;
        if (st & (KN_DETACHED | KN_DISABLED | KN_PROCESSING))
            take = 0;   /* the Python path decides (discard, defer) */
        PyObject *ev = NULL;
        if (take) {
            long fd = PyLong_AsLong(SLOT(w, woff[W_FD]));
            unsigned long long dev = PyLong_AsUnsignedLongLong(SLOT(w, woff[W_DEV]));
            unsigned long long ino = PyLong_AsUnsignedLongLong(SLOT(w, woff[W_INO]));
            if (PyErr_Occurred())
                goto fail_locked;
            long nb = probe_fd((int)fd, dev, ino, 0);
            if (nb < 0)
                take = 0;   /* gone or unreadable: the Python path decides */
            else if (nb == 0) {
                /* Stale: the same verdict as the Python path (ReadFilter.event is false
                 * for a plain knote with no bytes and no EOF/error), without asking the
                 * descriptor again there: no longer active, not delivered. */
                if (set_status(kn, st & ~(KN_WS | KN_ACTIVE)) < 0)
                    goto fail_locked;
            }
            else {
                ev = cls->tp_alloc(cls, 0);
                PyObject *data = ev ? PyLong_FromLong(nb) : NULL;
                if (data == NULL) {
                    Py_XDECREF(ev);
                    goto fail_locked;
                }
                PyObject *vals[6] = {SLOT(kn, koff[K_IDENT]), SLOT(kn, koff[K_FILTER]),
                                     SLOT(kn, koff[K_FLAGS]), SLOT(kn, koff[K_FFLAGS]), data,
                                     SLOT(kn, koff[K_UDATA])};
                for (int j = 0; j < 6; j++) {
                    if (j != 4)
                        Py_INCREF(vals[j]);
                    SLOT(ev, off[j]) = vals[j];
                }
                if (PyList_Append(out, ev) < 0) {
                    Py_DECREF(ev);
                    goto fail_locked;
                }
                Py_DECREF(ev);
                long nst = st & ~KN_WS;
                if (multi) {
                    nst |= KN_PROCESSING;
                    Py_XSETREF(SLOT(kn, koff[K_OWNER]), Py_NewRef(q));
                    if (PyList_Append(owned, kn) < 0)
                        goto fail_locked;
                } else {
                    Py_XSETREF(SLOT(kn, koff[K_QUEUED]), Py_NewRef(q));
                    PyObject *lst = SLOT(kn, koff[K_RT]) == Py_True ? req_rt : req_norm;
                    if (PyList_Append(lst, kn) < 0)
                        goto fail_locked;
                }
                if (set_status(kn, nst) < 0)
                    goto fail_locked;
            }
        }
        r = PyObject_CallMethodNoArgs(lock, str_release);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        if (!take)
            break;
        continue;
    fail_locked:
        {
            PyObject *et, *evv, *tb;
            PyErr_Fetch(&et, &evv, &tb);
            PyObject *rr = PyObject_CallMethodNoArgs(lock, str_release);
            Py_XDECREF(rr);
            PyErr_Restore(et, evv, tb);
            return NULL;
        }
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"bind_knote", (PyCFunction)bind_knote, METH_VARARGS,
     "bind_knote(Knote, FdWatch): learn the slot offsets"},
    {"deliver", (PyCFunction)(void (*)(void))deliver, METH_FASTCALL,
     "deliver(batch, start, cls, q, out, requeue_rt, requeue_norm, owned, multi) -> index"},
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
