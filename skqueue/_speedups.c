/*
 * Optional accelerator for skqueue's hot path; everything works without it (or with
 * SKQUEUE_PURE=1), and tests/test_core_speedups.py checks the two agree.
 *
 *   probe, read_event     identity check + FIONREAD/SIOCOUTQ (fd.py: py_probe, ...)
 *   Lock                  the knote lock (else threading.Lock; _knote.py)
 *   deliver               _collect's loop for plain READ knotes: one poll(2) per run,
 *                         an fstat per event, ``data`` read lazily (lazy_data)
 *   take_batch, requeue   _collect's batch pop and requeue (else its Python loops)
 *
 * probe(fd, dev, ino, op) -> int
 *     op 0: FIONREAD (bytes readable)   op 1: SIOCOUTQ (bytes unsent)   op 2: identity only
 *     returns >= 0 on success, -1 if fd is closed or no longer (dev, ino), -2 if the
 *     ioctl is not supported by this kind of file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <structmember.h>

/* fstat(2) as the kernel's own call: glibc >= 2.33 routes fstat() through
 * fstatat(fd, "", AT_EMPTY_PATH), which copies and checks an empty path first (about 15%
 * of the call here).  Only where the kernel's struct stat is glibc's (x86-64). */
static inline int
fstat_fd(int fd, struct stat *st)
{
#if defined(__x86_64__) && defined(SYS_fstat)
    return (int)syscall(SYS_fstat, fd, st);
#else
    return fstat(fd, st);
#endif
}

/* The probe itself, shared by every entry point: >= 0 bytes (or 0 for op 2), -1 if fd is
 * closed or no longer (dev, ino), -2 if the ioctl does not apply to this file. */
static long
probe_fd(int fd, unsigned long long dev, unsigned long long ino, long op)
{
    struct stat st;
    if (fstat_fd(fd, &st) < 0 || (unsigned long long)st.st_dev != dev ||
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
 * Lock(): the knote lock.  A non-reentrant mutex like threading.Lock (acquire, release,
 * locked, the context manager), whose point is that the scan in C takes and drops it
 * with two direct calls instead of two Python method calls.  A blocked acquire waits
 * with the GIL released (free-threaded builds: detached from the interpreter, so a
 * stop-the-world pause does not wait for it); it is not interruptible by signals, which
 * is fine for a lock held for a few statements.
 *
 * ``held`` is atomic: without a GIL, release() from two threads at once must not both
 * see it set and release the underlying lock twice (a semaphore would then admit two
 * owners); exactly one of them clears it, the other gets "release unlocked lock".
 */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock lk;
    atomic_int held;
} LockObject;

static PyTypeObject LockType;

static inline void
lock_acquire_fast(LockObject *l)
{
    if (!PyThread_acquire_lock(l->lk, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(l->lk, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    atomic_store_explicit(&l->held, 1, memory_order_relaxed);
}

/* The scan releases what it acquired; clearing ``held`` with an exchange all the same
 * keeps a racing release() from releasing the lock a second time. */
static inline void
lock_release_fast(LockObject *l)
{
    if (atomic_exchange(&l->held, 0))
        PyThread_release_lock(l->lk);
}

static PyObject *
Lock_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no arguments");
        return NULL;
    }
    LockObject *l = (LockObject *)type->tp_alloc(type, 0);
    if (l == NULL)
        return NULL;
    atomic_init(&l->held, 0);
    l->lk = PyThread_allocate_lock();
    if (l->lk == NULL) {
        Py_DECREF(l);
        return PyErr_NoMemory();
    }
    return (PyObject *)l;
}

static void
Lock_dealloc(LockObject *l)
{
    if (l->lk != NULL) {
        if (atomic_load(&l->held))
            PyThread_release_lock(l->lk);
        PyThread_free_lock(l->lk);
    }
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *
Lock_acquire(LockObject *l, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pd:acquire", kwlist, &blocking, &timeout))
        return NULL;
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return NULL;
    }
    if (PyThread_acquire_lock(l->lk, NOWAIT_LOCK)) {
        atomic_store_explicit(&l->held, 1, memory_order_relaxed);
        Py_RETURN_TRUE;
    }
    if (!blocking)
        Py_RETURN_FALSE;
    PyLockStatus r;
    long long us = -1;
    if (timeout >= 0)
        us = timeout * 1e6 >= (double)PY_TIMEOUT_MAX ? PY_TIMEOUT_MAX : (long long)(timeout * 1e6);
    Py_BEGIN_ALLOW_THREADS
    r = PyThread_acquire_lock_timed(l->lk, us, 0);
    Py_END_ALLOW_THREADS
    if (r != PY_LOCK_ACQUIRED)
        Py_RETURN_FALSE;
    atomic_store_explicit(&l->held, 1, memory_order_relaxed);
    Py_RETURN_TRUE;
}

static PyObject *
Lock_enter(LockObject *l, PyObject *unused)
{
    lock_acquire_fast(l);
    Py_RETURN_TRUE;
}

static PyObject *
Lock_release(LockObject *l, PyObject *unused)
{
    /* Check and clear in one step: of two racing callers, one wins. */
    if (!atomic_exchange(&l->held, 0)) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    PyThread_release_lock(l->lk);
    Py_RETURN_NONE;
}

static PyObject *
Lock_exit(LockObject *l, PyObject *const *args, Py_ssize_t nargs)
{
    return Lock_release(l, NULL);
}

static PyObject *
Lock_locked(LockObject *l, PyObject *unused)
{
    return PyBool_FromLong(atomic_load_explicit(&l->held, memory_order_relaxed));
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "release()"},
    {"locked", (PyCFunction)Lock_locked, METH_NOARGS, "locked() -> bool"},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Lock_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "skqueue._speedups.Lock",
    .tp_basicsize = sizeof(LockObject),
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The knote lock: a non-reentrant mutex with threading.Lock's interface.",
    .tp_methods = Lock_methods,
    .tp_new = Lock_new,
};

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
 * DISPATCH.  For a run of such knotes, one poll(2) re-checks readiness for all of them
 * (the kernel's f_event re-check, batched); then, for each, under its lock:
 *   - not readable: stale, marked inactive (as the Python loop would) and skipped;
 *   - readable (POLLIN and nothing else): identity check, then an event of the *lazy*
 *     class ``cls`` (bind_lazy) whose data slot holds the FdWatch: FIONREAD is read the
 *     first time the program looks at ``data`` (lazy_data).  Once the program has read
 *     ``data`` of an event on this descriptor (watch.want_data), FIONREAD is read here,
 *     with the identity check, as the pure-Python scan does;
 *   - anything else (hang-up, error, closed, reused): left to the Python path.
 * A delivered knote is requeued (legacy: claimed for the tail) or owned by ``q`` (multi).
 * It stops at the first knote that needs the Python path and returns its index, so the
 * output order is exactly the Python loop's.
 * bind_knote(Knote, FdWatch) must have been called once.
 */
enum { K_LOCK, K_STATUS, K_FAST, K_HOOK, K_IDENT, K_FILTER, K_FLAGS, K_FFLAGS, K_UDATA,
       K_RT, K_QUEUED, K_OWNER, K_PARKED, K_N };
enum { W_FD, W_DEV, W_INO, W_EOF, W_ERR, W_WANT, W_N };
static Py_ssize_t koff[K_N], woff[W_N];
static PyTypeObject *knote_type = NULL, *watch_type = NULL;
static PyObject *str_acquire = NULL, *str_release = NULL, *str_popleft = NULL,
                *str_append = NULL;

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
                                         "owner", "parked"};
    static const char *w_names[W_N] = {"fd", "dev", "ino", "eof", "err", "want_data"};
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
        str_popleft = PyUnicode_InternFromString("popleft");
        str_append = PyUnicode_InternFromString("append");
        if (str_acquire == NULL || str_release == NULL || str_popleft == NULL ||
            str_append == NULL)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* A method of a built-in type, called without looking it up each time: the knote locks
 * (_thread.lock) and kevq deques are always the same types, so the unbound method
 * descriptor is learned once and called with the object as its first argument.
 * Filled once, by the first caller (any thread): ``descr`` is claimed with a
 * compare-and-swap, then ``type`` published with release order, so a reader that sees
 * ``type`` also sees its ``descr``.  Objects of another type take the uncached call.
 * The cached descriptor keeps its type alive. */
typedef struct {
    PyObject **name;
    _Atomic(PyTypeObject *) type;
    _Atomic(PyObject *) descr;
} method_cache;

static method_cache m_acquire = {&str_acquire, NULL, NULL};
static method_cache m_release = {&str_release, NULL, NULL};
static method_cache m_popleft = {&str_popleft, NULL, NULL};
static method_cache m_append = {&str_append, NULL, NULL};

static PyObject *
call_method(method_cache *m, PyObject *obj, PyObject *arg)
{
    PyObject *args[2] = {obj, arg};
    size_t n = arg == NULL ? 1 : 2;
    PyTypeObject *tp = atomic_load_explicit(&m->type, memory_order_acquire);
    if (tp == Py_TYPE(obj))
        return PyObject_Vectorcall(atomic_load_explicit(&m->descr, memory_order_relaxed),
                                   args, n, NULL);
    if (tp == NULL) {
        PyObject *d = PyObject_GetAttr((PyObject *)Py_TYPE(obj), *m->name);
        if (d == NULL)
            return NULL;
        PyObject *none = NULL;
        if (Py_IS_TYPE(d, &PyMethodDescr_Type) &&   /* a built-in's method: cache it */
            atomic_compare_exchange_strong(&m->descr, &none, d)) {
            atomic_store_explicit(&m->type, Py_TYPE(obj), memory_order_release);
            return PyObject_Vectorcall(d, args, n, NULL);   /* the cache owns d */
        }
        Py_DECREF(d);
    }
    return PyObject_VectorcallMethod(*m->name, args, n, NULL);
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

/* The classes deliver() may build: kevent subclasses whose ``data`` is the lazy
 * property (a plain kevent would hand the FdWatch itself to the program). */
#define LAZY_MAX 8
static PyTypeObject *lazy_types[LAZY_MAX];
/* Callers of bind_lazy hold fd.py's lock; readers (is_lazy, any thread) see an entry
 * only after it is written: the count is published with release order. */
static atomic_int n_lazy = 0;

static PyObject *
bind_lazy(PyObject *self, PyObject *cls)
{
    if (bound_base == NULL || !PyType_Check(cls) ||
        !PyType_IsSubtype((PyTypeObject *)cls, bound_base)) {
        PyErr_SetString(PyExc_TypeError, "bind_lazy() needs a subclass of the bound kevent");
        return NULL;
    }
    int n = atomic_load_explicit(&n_lazy, memory_order_acquire);
    for (int k = 0; k < n; k++)
        if (lazy_types[k] == (PyTypeObject *)cls)
            Py_RETURN_NONE;
    if (n == LAZY_MAX) {
        PyErr_SetString(PyExc_RuntimeError, "bind_lazy(): too many classes");
        return NULL;
    }
    lazy_types[n] = (PyTypeObject *)Py_NewRef(cls);
    atomic_store_explicit(&n_lazy, n + 1, memory_order_release);
    Py_RETURN_NONE;
}

static int
is_lazy(PyTypeObject *cls)
{
    int n = atomic_load_explicit(&n_lazy, memory_order_acquire);
    for (int k = 0; k < n; k++)
        if (lazy_types[k] == cls)
            return 1;
    return 0;
}

/* Can batch[i] take the C path (its status is checked later, under its lock)?
 * Sets *w to its watch and *fd to the descriptor.  With the GIL these reads cannot
 * interleave with a writer (nothing here lets other threads run); a free-threaded build
 * takes the knote lock around them (candidate_locked). */
static int
candidate_unlocked(PyObject *kn, PyObject **w, int *fd)
{
    if (!Py_IS_TYPE(kn, knote_type) || SLOT(kn, koff[K_FAST]) != Py_True)
        return 0;
    PyObject *ww = SLOT(kn, koff[K_HOOK]);
    if (ww == NULL || !Py_IS_TYPE(ww, watch_type) || SLOT(ww, woff[W_EOF]) != Py_False ||
        SLOT(ww, woff[W_ERR]) != Py_False)
        return 0;
    PyObject *fl = SLOT(kn, koff[K_FLAGS]);
    if (fl == NULL || !PyLong_CheckExact(fl))
        return 0;
    long flags = PyLong_AsLong(fl);
    if (flags == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (flags & (EV_ONESHOT_F | EV_CLEAR_F | EV_DISPATCH_F))
        return 0;
    long f = PyLong_AsLong(SLOT(ww, woff[W_FD]));
    if (f < 0 || f > INT_MAX) {
        PyErr_Clear();
        return 0;
    }
    *w = ww;
    *fd = (int)f;
    return 1;
}

static int
candidate(PyObject *kn, PyObject **w, int *fd)
{
#ifdef Py_GIL_DISABLED
    if (!Py_IS_TYPE(kn, knote_type) || !Py_IS_TYPE(SLOT(kn, koff[K_LOCK]), &LockType))
        return 0;
    LockObject *l = (LockObject *)SLOT(kn, koff[K_LOCK]);
    lock_acquire_fast(l);
    int r = candidate_unlocked(kn, w, fd);
    lock_release_fast(l);
    return r;
#else
    return candidate_unlocked(kn, w, fd);
#endif
}

#define RUN_MAX 128

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
    if ((i < 0 && PyErr_Occurred()) || multi < 0)
        return NULL;
    if (!PyList_Check(batch) || !PyList_Check(out) || !PyList_Check(req_rt) ||
        !PyList_Check(req_norm) || !PyList_Check(owned) || knote_type == NULL ||
        !PyType_Check(args[2]) || !is_lazy(cls)) {
        PyErr_SetString(PyExc_TypeError, "deliver(): bad arguments or not bound");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    struct pollfd pf[RUN_MAX];
    while (i < n) {
        /* The run of candidates from i, and one poll(2) for all of them. */
        int m = 0;
        while (i + m < n && m < RUN_MAX) {
            PyObject *w;
            int fd;
            if (!candidate(PyList_GET_ITEM(batch, i + m), &w, &fd))
                break;
            pf[m].fd = fd;
            pf[m].events = POLLIN | POLLRDHUP;
            pf[m].revents = 0;
            m++;
        }
        if (m == 0)
            break;
        int rc;
        do {
            rc = poll(pf, (nfds_t)m, 0);
        } while (rc < 0 && errno == EINTR);
        if (rc < 0)
            break;   /* (ENOMEM) the Python path re-checks them one by one */
        for (int k = 0; k < m; k++, i++) {
            PyObject *kn = PyList_GET_ITEM(batch, i);
            PyObject *lock = SLOT(kn, koff[K_LOCK]);
            PyObject *r;
            if (Py_IS_TYPE(lock, &LockType))
                lock_acquire_fast((LockObject *)lock);
            else {
                r = call_method(&m_acquire, lock, NULL);
                if (r == NULL)
                    return NULL;
                Py_DECREF(r);
            }
            /* Acquiring may have let other threads run: look at the knote afresh. */
            long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
            PyObject *w = SLOT(kn, koff[K_HOOK]);
            short re = pf[k].revents;
            int take = 1;
            if (st & (KN_DETACHED | KN_DISABLED | KN_PROCESSING) || w == NULL ||
                SLOT(kn, koff[K_QUEUED]) != Py_None ||   /* queued again since the pop */
                !Py_IS_TYPE(w, watch_type) ||
                PyLong_AsLong(SLOT(w, woff[W_FD])) != pf[k].fd ||
                (re != 0 && re != POLLIN)) {
                take = 0;   /* the Python path decides (discard, defer, EOF, gone) */
                PyErr_Clear();   /* (a non-int field: not ours to report) */
            }
            else if (re == 0) {
                /* Stale: ReadFilter.event is false for a plain knote with nothing to
                 * read and no EOF/error, so no longer active, not delivered. */
                if (set_status(kn, st & ~(KN_WS | KN_ACTIVE)) < 0)
                    goto fail_locked;
            }
            else {
                unsigned long long dev = PyLong_AsUnsignedLongLong(SLOT(w, woff[W_DEV]));
                unsigned long long ino = PyLong_AsUnsignedLongLong(SLOT(w, woff[W_INO]));
                if (PyErr_Occurred())
                    goto fail_locked;
                /* A program that read ``data`` of this descriptor's last event gets it
                 * read now (FIONREAD with the identity check); others get it lazily. */
                int eager = SLOT(w, woff[W_WANT]) == Py_True;
                long nb = probe_fd(pf[k].fd, dev, ino, eager ? 0 : 2);
                PyObject *data = NULL;
                if (nb == -1 || (nb < 0 && eager))
                    take = 0;   /* closed or reused: the Python path drops it */
                else if (eager && (data = PyLong_FromLong(nb)) == NULL)
                    goto fail_locked;
                else {
                    PyObject *ev = cls->tp_alloc(cls, 0);
                    if (ev == NULL) {
                        Py_XDECREF(data);
                        goto fail_locked;
                    }
                    PyObject *vals[6] = {SLOT(kn, koff[K_IDENT]), SLOT(kn, koff[K_FILTER]),
                                         SLOT(kn, koff[K_FLAGS]), SLOT(kn, koff[K_FFLAGS]),
                                         data != NULL ? data : w, SLOT(kn, koff[K_UDATA])};
                    for (int j = 0; j < 6; j++)
                        SLOT(ev, off[j]) = Py_NewRef(vals[j]);   /* fresh: slots NULL */
                    Py_XDECREF(data);
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
            if (Py_IS_TYPE(lock, &LockType))
                lock_release_fast((LockObject *)lock);
            else {
                r = call_method(&m_release, lock, NULL);
                if (r == NULL)
                    return NULL;
                Py_DECREF(r);
            }
            if (!take)
                return PyLong_FromSsize_t(i);
            continue;
        fail_locked:
            {
                PyObject *et, *evv, *tb;
                PyErr_Fetch(&et, &evv, &tb);
                if (Py_IS_TYPE(lock, &LockType))
                    lock_release_fast((LockObject *)lock);
                else
                    Py_XDECREF(call_method(&m_release, lock, NULL));
                PyErr_Restore(et, evv, tb);
                return NULL;
            }
        }
    }
    return PyLong_FromSsize_t(i);
}

/*
 * lazy_data(ev) -> int
 *
 * The getter of ``data`` on the lazy event classes (fd.py, lazy_event_class): deliver()
 * leaves the FdWatch in the data slot; the first read replaces it with FIONREAD, or 0 if
 * the descriptor is no longer the file (dev, ino).  One value per event: the check and
 * the store happen without letting another thread in (the GIL, or a critical section on
 * the event in a free-threaded build).
 */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

static PyObject *
lazy_data(PyObject *self, PyObject *ev)
{
    if (bound_base == NULL || watch_type == NULL ||
        !PyObject_TypeCheck(ev, bound_base)) {
        PyErr_SetString(PyExc_TypeError, "lazy_data() needs a kevent");
        return NULL;
    }
    PyObject *v;
#ifndef Py_GIL_DISABLED
    /* With the GIL nothing can replace the slot between this read and the incref.
     * Without it, ``ev.data = x`` in another thread could (and free the old value), so
     * there every read takes the event's critical section, as the slot's own getter
     * and setter do. */
    v = SLOT(ev, off[4]);
    if (v != NULL && !Py_IS_TYPE(v, watch_type))
        return Py_NewRef(v);
#endif
    PyObject *res = NULL;
    Py_BEGIN_CRITICAL_SECTION(ev);
    v = SLOT(ev, off[4]);
    if (v == NULL)
        PyErr_SetString(PyExc_AttributeError, "data");
    else if (!Py_IS_TYPE(v, watch_type))
        res = Py_NewRef(v);
    else {
        long fd = PyLong_AsLong(SLOT(v, woff[W_FD]));
        unsigned long long dev = PyLong_AsUnsignedLongLong(SLOT(v, woff[W_DEV]));
        unsigned long long ino = PyLong_AsUnsignedLongLong(SLOT(v, woff[W_INO]));
        if (!PyErr_Occurred()) {
            long n = fd < 0 || fd > INT_MAX ? -1 : probe_fd((int)fd, dev, ino, 0);
            res = PyLong_FromLong(n > 0 ? n : 0);
            if (res != NULL) {
                Py_SETREF(SLOT(ev, off[4]), Py_NewRef(res));
                /* This program reads data: the next events of this descriptor carry
                 * it from the scan (deliver) instead of costing a second fstat here. */
                Py_XSETREF(SLOT(v, woff[W_WANT]), Py_NewRef(Py_True));
            }
        }
    }
    Py_END_CRITICAL_SECTION();
    return res;
}

/*
 * take_batch(dq, want, q) -> (list, parked)
 *
 * Pops up to ``want`` knotes from the front of the deque ``dq`` (the caller holds the
 * kevq lock), clears their ``queued_on`` and ``parked`` and counts the parked ones (the
 * caller takes that many off ``q.nparked``).  _collect's batch pop; _kevq.py's
 * py_take_batch is the reference.
 */
static PyObject *
take_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || knote_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "take_batch(dq, want, q) takes 3 arguments");
        return NULL;
    }
    PyObject *dq = args[0], *q = args[2];
    Py_ssize_t want = PyLong_AsSsize_t(args[1]);
    if (want < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "take_batch(): negative count");
        return NULL;
    }
    Py_ssize_t len = PyObject_Length(dq);
    if (len < 0)
        return NULL;
    if (want > len)
        want = len;
    PyObject *batch = PyList_New(want);
    if (batch == NULL)
        return NULL;
    long parked = 0;
    for (Py_ssize_t k = 0; k < want; k++) {
        PyObject *kn = call_method(&m_popleft, dq, NULL);
        if (kn == NULL) {
            Py_DECREF(batch);
            return NULL;
        }
        PyList_SET_ITEM(batch, k, kn);
        if (!Py_IS_TYPE(kn, knote_type)) {
            Py_DECREF(batch);
            PyErr_SetString(PyExc_TypeError, "take_batch(): not a Knote");
            return NULL;
        }
        Py_XSETREF(SLOT(kn, koff[K_QUEUED]), Py_NewRef(Py_None));
        if (SLOT(kn, koff[K_PARKED]) == Py_True) {
            Py_XSETREF(SLOT(kn, koff[K_PARKED]), Py_NewRef(Py_False));
            parked++;
        }
    }
    return Py_BuildValue("(Nl)", batch, parked);
}

/*
 * requeue(dq, knotes, q) -> int
 *
 * Appends to ``dq`` every knote of ``knotes`` still claimed for ``q`` (queued_on is q;
 * the caller holds the kevq lock), parks those another kevq is processing now and returns
 * how many it parked (the caller adds that to ``q.nparked``).  _collect's batch requeue;
 * _kevq.py's py_requeue is the reference.
 */
static PyObject *
requeue(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || knote_type == NULL || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "requeue(dq, knotes: list, q)");
        return NULL;
    }
    PyObject *dq = args[0], *lst = args[1], *q = args[2];
    long parked = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(lst); k++) {
        PyObject *kn = PyList_GET_ITEM(lst, k);
        if (!Py_IS_TYPE(kn, knote_type)) {
            PyErr_SetString(PyExc_TypeError, "requeue(): not a Knote");
            return NULL;
        }
        if (SLOT(kn, koff[K_QUEUED]) != q)
            continue;
        PyObject *r = call_method(&m_append, dq, kn);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        /* The status is written under the knote lock, which the caller does not hold:
         * without the GIL, read it inside the knote's critical section (where Python's
         * slot setter replaces it), so the int is not freed under us. */
        long st;
        Py_BEGIN_CRITICAL_SECTION(kn);
        st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
        Py_END_CRITICAL_SECTION();
        if (st == -1 && PyErr_Occurred())
            return NULL;
        if (st & KN_PROCESSING && SLOT(kn, koff[K_OWNER]) != q) {
            Py_XSETREF(SLOT(kn, koff[K_PARKED]), Py_NewRef(Py_True));
            parked++;
        }
    }
    return PyLong_FromLong(parked);
}

/* constants() -> dict: the Python constants this file hard-codes, for the import-time
 * check in skqueue._accel (a helper built from another version must not run). */
static PyObject *
constants(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{sisisisisisisisi}", "KN_ACTIVE", KN_ACTIVE, "KN_DISABLED",
                         KN_DISABLED, "KN_DETACHED", KN_DETACHED, "KN_PROCESSING",
                         KN_PROCESSING, "KN_WS", KN_WS, "EV_ONESHOT", EV_ONESHOT_F,
                         "EV_CLEAR", EV_CLEAR_F, "EV_DISPATCH", EV_DISPATCH_F);
}

static PyMethodDef methods[] = {
    {"constants", constants, METH_NOARGS,
     "constants() -> dict: the status bits and flags hard-coded here, by Python name"},
    {"bind_knote", (PyCFunction)bind_knote, METH_VARARGS,
     "bind_knote(Knote, FdWatch): learn the slot offsets"},
    {"deliver", (PyCFunction)(void (*)(void))deliver, METH_FASTCALL,
     "deliver(batch, start, cls, q, out, requeue_rt, requeue_norm, owned, multi) -> index"},
    {"take_batch", (PyCFunction)(void (*)(void))take_batch, METH_FASTCALL,
     "take_batch(dq, want, q) -> (knotes, parked): _collect's batch pop"},
    {"requeue", (PyCFunction)(void (*)(void))requeue, METH_FASTCALL,
     "requeue(dq, knotes, q) -> parked: _collect's batch requeue"},
    {"lazy_data", (PyCFunction)lazy_data, METH_O,
     "lazy_data(ev) -> int: the data getter of the lazy event classes"},
    {"bind_lazy", (PyCFunction)bind_lazy, METH_O,
     "bind_lazy(cls): allow deliver() to build this lazy-data kevent subclass"},
    {"bind", (PyCFunction)bind, METH_O, "bind(kevent_class): learn the slot offsets"},
    {"read_event", (PyCFunction)(void (*)(void))read_event, METH_FASTCALL,
     "read_event(cls, fd, dev, ino, ident, filter, flags, fflags, udata) -> event | int"},
    {"probe", (PyCFunction)(void (*)(void))probe, METH_FASTCALL,
     "probe(fd, dev, ino, op) -> bytes (op 0 FIONREAD, 1 SIOCOUTQ, 2 identity); -1 gone; -2 n/a"},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *m)
{
    if (PyType_Ready(&LockType) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType);
}

/*
 * Multi-phase initialisation, so the module can declare (Py_mod_gil) that it does not
 * need the GIL: importing it on a free-threaded build leaves the GIL off.  What that
 * promise rests on: the Lock's state is atomic; bind and bind_knote run once, at
 * import; bind_lazy runs under fd.py's lock and publishes with release/acquire; the
 * method cache is filled once; lazy_data takes the event's critical section; the scan
 * helpers work under the knote and kevq locks their callers take (_kqueue.py).
 * The static type and the process-wide bindings make it one module per process:
 * subinterpreters with their own state are refused.
 */
static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "skqueue._speedups",
    .m_doc = "skqueue hot-path helpers",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}
