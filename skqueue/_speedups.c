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
#include <time.h>
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
 * stop-the-world pause does not wait for it), on a semaphore: unlike threading.Lock on a
 * free-threaded 3.13 (a PyMutex), it does not spin through sched_yield() first, so it
 * is also the gate a kevq's sleeping thread waits on (_kevq.py, KevqCond).  The
 * acquire() method is interruptible as threading.Lock's is: a signal runs its handlers
 * and the wait goes on, unless a handler raises.  The context manager (the lock held
 * for a few statements) and the C scan's fast path are not.
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

static inline long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);   /* time.monotonic_ns()'s clock */
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

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
    long long us = -1, deadline_us = 0;
    if (timeout >= 0) {
        us = timeout * 1e6 >= (double)PY_TIMEOUT_MAX ? PY_TIMEOUT_MAX : (long long)(timeout * 1e6);
        deadline_us = now_ns() / 1000 + us;
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(l->lk, us, 1);
        Py_END_ALLOW_THREADS
        if (r != PY_LOCK_INTR)
            break;
        /* A signal interrupted the wait: run the handlers (the main thread's job); one
         * that raises ends the wait with its exception, else wait out the rest. */
        if (PyErr_CheckSignals() < 0)
            return NULL;
        if (us > 0) {
            us = deadline_us - now_ns() / 1000;
            if (us < 0)
                us = 0;
        }
    }
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
       K_RT, K_QUEUED, K_OWNER, K_PARKED, K_TURNS, K_N };
enum { W_FD, W_DEV, W_INO, W_EOF, W_ERR, W_WANT, W_N };
static Py_ssize_t koff[K_N], woff[W_N];
static PyTypeObject *knote_type = NULL, *watch_type = NULL;
static PyObject *str_acquire = NULL, *str_release = NULL, *str_popleft = NULL,
                *str_append = NULL, *str_clear = NULL, *str_extend = NULL;

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
                                         "owner", "parked", "turns"};
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
        str_clear = PyUnicode_InternFromString("clear");
        str_extend = PyUnicode_InternFromString("extend");
        if (str_acquire == NULL || str_release == NULL || str_popleft == NULL ||
            str_append == NULL || str_clear == NULL || str_extend == NULL)
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
static method_cache m_clear = {&str_clear, NULL, NULL};
static method_cache m_extend = {&str_extend, NULL, NULL};

/* d[key] as a new reference in *out (NULL if absent): 1 found, 0 absent, -1 error.  The
 * one home of the version difference (PyDict_GetItemRef is 3.13's; before it the borrowed
 * lookup is safe under the GIL). */
static int
dict_get_ref(PyObject *d, PyObject *key, PyObject **out)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyDict_GetItemRef(d, key, out);
#else
    *out = Py_XNewRef(PyDict_GetItemWithError(d, key));
    return *out != NULL ? 1 : PyErr_Occurred() ? -1 : 0;
#endif
}

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

/* Take (acquire != 0) or drop a lock: the C Lock directly, anything else (the kevq's
 * threading.Lock, shared with its Condition) through its methods.  0, or -1. */
static int
lock_op(PyObject *l, int acquire)
{
    if (Py_IS_TYPE(l, &LockType)) {
        if (acquire)
            lock_acquire_fast((LockObject *)l);
        else
            lock_release_fast((LockObject *)l);
        return 0;
    }
    PyObject *r = call_method(acquire ? &m_acquire : &m_release, l, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Drop a lock on the way out of an error, keeping the error. */
static void
unlock_err(PyObject *l)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    lock_op(l, 0);
    PyErr_Restore(et, ev, tb);
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))
/* A slot read without the lock that guards it: the value is only compared by identity
 * (None, True, False, a kevq), never dereferenced. */
#ifdef Py_GIL_DISABLED
#define SLOT_PEEK(o, off) ((PyObject *)__atomic_load_n(&SLOT(o, off), __ATOMIC_ACQUIRE))
#else
#define SLOT_PEEK(o, off) SLOT(o, off)
#endif

static int
set_status(PyObject *kn, long v)
{
    PyObject *o = PyLong_FromLong(v);
    if (o == NULL)
        return -1;
    Py_XSETREF(SLOT(kn, koff[K_STATUS]), o);
    return 0;
}

/* Knote.turns, its deliveries (caller holds the knote's lock): -1 with an error set if it
 * is not an int. */
static inline long
kn_turns(PyObject *kn)
{
    return PyLong_AsLong(SLOT(kn, koff[K_TURNS]));
}

/* The knote was delivered (caller holds its lock): one more turn. */
static int
bump_turns(PyObject *kn, long turns)
{
    PyObject *o = PyLong_FromLong(turns + 1);
    if (o == NULL)
        return -1;
    Py_XSETREF(SLOT(kn, koff[K_TURNS]), o);
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

/* Can batch[i] take the C path (its status is checked again under its lock)?
 * Sets *w to its watch, *fd to the descriptor and *turns to its deliveries so far.  They
 * are read before the poll(2) whose answer the scan takes under the lock only if nobody
 * was handed the event in between: the turns are the same, and nobody held it already
 * (a knote another thread owns is no candidate).  With the GIL these reads cannot
 * interleave with a writer (nothing here lets other threads run); a free-threaded build
 * takes the knote lock around them (candidate). */
static int
candidate_unlocked(PyObject *kn, PyObject **w, int *fd, long *turns)
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
    long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
    if (st & KN_PROCESSING || (st == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    long f = PyLong_AsLong(SLOT(ww, woff[W_FD]));
    if (f < 0 || f > INT_MAX) {
        PyErr_Clear();
        return 0;
    }
    long t = kn_turns(kn);
    if (t == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *w = ww;
    *fd = (int)f;
    *turns = t;
    return 1;
}

/* candidate_unlocked under the knote's lock where there is no GIL to serialise the
 * reads: taken (``nowait`` 0, the scan) or only tried (``nowait`` 1, fast_control's
 * peek, which treats a busy knote as no candidate). */
static int
candidate(PyObject *kn, PyObject **w, int *fd, long *turns, int nowait)
{
#ifdef Py_GIL_DISABLED
    if (!Py_IS_TYPE(kn, knote_type) || !Py_IS_TYPE(SLOT(kn, koff[K_LOCK]), &LockType))
        return 0;
    LockObject *l = (LockObject *)SLOT(kn, koff[K_LOCK]);
    if (!nowait)
        lock_acquire_fast(l);
    else if (PyThread_acquire_lock(l->lk, NOWAIT_LOCK))
        atomic_store_explicit(&l->held, 1, memory_order_relaxed);
    else
        return 0;
    int r = candidate_unlocked(kn, w, fd, turns);
    lock_release_fast(l);
    return r;
#else
    (void)nowait;
    return candidate_unlocked(kn, w, fd, turns);
#endif
}

#define RUN_MAX 128

/* Tests only (scan_pause): microseconds a scan sleeps, without the GIL, between a run's
 * poll(2) and its first knote lock, to widen the window the turns check closes. */
static _Atomic int scan_pause_us = 0;

static PyObject *
scan_pause(PyObject *self, PyObject *arg)
{
    long us = PyLong_AsLong(arg);
    if (us == -1 && PyErr_Occurred())
        return NULL;
    if (us < 0 || us > 1000000) {
        PyErr_SetString(PyExc_ValueError, "scan_pause: 0..1000000 microseconds");
        return NULL;
    }
    atomic_store_explicit(&scan_pause_us, (int)us, memory_order_relaxed);
    Py_RETURN_NONE;
}

/* The readiness of a run taken before it was popped (fast_control's peek, whose poll(2)
 * also asked the backend's epoll whether there is anything to harvest): the candidate
 * knotes at the head of the queue and their pollfds (and the epoll's, after them).
 * deliver_impl uses it, once, for the run the batch makes of these knotes in this order,
 * instead of polling them again. */
typedef struct {
    int n;
    int polled;    /* pf[].revents hold poll(2)'s answer */
    int trusted;   /* nothing ran since the peek checked the candidates */
    PyObject *kn[RUN_MAX];
    long turns[RUN_MAX];
    struct pollfd pf[RUN_MAX + 1];
} recheck;

/* deliver()'s loop from batch[i] (the arguments checked); returns the index of the
 * first knote it leaves to the Python path (len(batch) if none), or -1 with an error.
 * ``pre``: NULL, or a peeked run's readiness. */
static Py_ssize_t
deliver_impl(PyObject *batch, Py_ssize_t i, PyTypeObject *cls, PyObject *q, PyObject *out,
             PyObject **req_rt, PyObject **req_norm, PyObject *owned, int multi, recheck *pre)
{
    Py_ssize_t n = PyList_GET_SIZE(batch);
    struct pollfd pf[RUN_MAX];
    long turns[RUN_MAX];   /* each knote's turns when its readiness was asked */
    while (i < n) {
        int m = 0, rc;
        if (pre != NULL && pre->polled) {
            /* The peeked run, as far as the batch is made of it: its knotes were
             * candidates at the peek (checked again if a harvest ran since), and poll(2)
             * found them readable then.  Only that answer is taken: "not readable" from
             * before the pop cannot mark a knote stale, since an activation between that
             * poll and the pop found the knote queued and only set KN_ACTIVE (after the
             * pop it queues the knote again, which is why deliver polls after the pop). */
            while (m < pre->n && i + m < n && PyList_GET_ITEM(batch, i + m) == pre->kn[m] &&
                   pre->pf[m].revents) {
                PyObject *w;
                int fd;
                long t;
                if (!pre->trusted &&
                    (!candidate(pre->kn[m], &w, &fd, &t, 0) || fd != pre->pf[m].fd ||
                     t != pre->turns[m]))
                    break;
                pf[m] = pre->pf[m];
                turns[m] = pre->turns[m];
                m++;
            }
            pre->polled = 0;   /* once */
            if (m > 0)
                goto polled;
        }
        /* The run of candidates from i, and one poll(2) for all of them. */
        while (i + m < n && m < RUN_MAX) {
            PyObject *w;
            int fd;
            if (!candidate(PyList_GET_ITEM(batch, i + m), &w, &fd, &turns[m], 0))
                break;
            pf[m].fd = fd;
            pf[m].events = POLLIN | POLLRDHUP;
            pf[m].revents = 0;
            m++;
        }
        if (m == 0)
            break;
        do {
            rc = poll(pf, (nfds_t)m, 0);
        } while (rc < 0 && errno == EINTR);
        if (rc < 0)
            break;   /* (ENOMEM) the Python path re-checks them one by one */
    polled:;
        int pause_us = atomic_load_explicit(&scan_pause_us, memory_order_relaxed);
        if (pause_us) {
            Py_BEGIN_ALLOW_THREADS
            usleep((useconds_t)pause_us);
            Py_END_ALLOW_THREADS
        }
        for (int k = 0; k < m; k++, i++) {
            PyObject *kn = PyList_GET_ITEM(batch, i);
            PyObject *lock = SLOT(kn, koff[K_LOCK]);
            if (lock_op(lock, 1) < 0)
                return -1;
            /* Acquiring may have let other threads run: look at the knote afresh.  poll(2)
             * answered before the lock: if the knote was delivered since its turns were
             * read, another thread may have read the bytes the answer saw and let it go
             * again; the answer is stale and the Python path asks again under the lock. */
            long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
            PyObject *w = SLOT(kn, koff[K_HOOK]);
            short re = pf[k].revents;
            int take = 1;
            if (st & (KN_DETACHED | KN_DISABLED | KN_PROCESSING) || w == NULL ||
                kn_turns(kn) != turns[k] ||
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
                    if (bump_turns(kn, turns[k]) < 0)
                        goto fail_locked;
                    long nst = st & ~KN_WS;
                    if (multi) {
                        nst |= KN_PROCESSING;
                        Py_XSETREF(SLOT(kn, koff[K_OWNER]), Py_NewRef(q));
                        if (PyList_Append(owned, kn) < 0)
                            goto fail_locked;
                    } else {
                        Py_XSETREF(SLOT(kn, koff[K_QUEUED]), Py_NewRef(q));
                        PyObject **lst = SLOT(kn, koff[K_RT]) == Py_True ? req_rt : req_norm;
                        if ((*lst == NULL && (*lst = PyList_New(0)) == NULL) ||
                            PyList_Append(*lst, kn) < 0)
                            goto fail_locked;
                    }
                    if (set_status(kn, nst) < 0)
                        goto fail_locked;
                }
            }
            if (lock_op(lock, 0) < 0)
                return -1;
            if (!take)
                return i;
            continue;
        fail_locked:
            unlock_err(lock);
            return -1;
        }
    }
    return i;
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
    if ((i < 0 && PyErr_Occurred()) || multi < 0)
        return NULL;
    if (!PyList_Check(batch) || !PyList_Check(out) || !PyList_Check(req_rt) ||
        !PyList_Check(req_norm) || !PyList_Check(owned) || knote_type == NULL ||
        !PyType_Check(args[2]) || !is_lazy(cls)) {
        PyErr_SetString(PyExc_TypeError, "deliver(): bad arguments or not bound");
        return NULL;
    }
    Py_ssize_t r = deliver_impl(batch, i, cls, q, out, &req_rt, &req_norm, owned, multi, NULL);
    return r < 0 ? NULL : PyLong_FromSsize_t(r);
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
 * kevq lock), clears their ``parked`` and then their ``queued_on`` and counts the parked
 * ones (the caller takes that many off ``q.nparked``).  _collect's batch pop; _kevq.py's
 * py_take_batch is the reference.
 */
static PyObject *
take_batch_impl(PyObject *dq, Py_ssize_t want, PyObject *q, long *parked_out)
{
    Py_ssize_t len = PyObject_Length(dq);
    if (len < 0)
        return NULL;
    if (want > len)
        want = len;
    PyObject *batch;
    if (want == len && want > 1) {
        /* The whole deque (a scan of everything queued): copied, then cleared. */
        batch = PySequence_List(dq);
        PyObject *r = batch == NULL ? NULL : call_method(&m_clear, dq, NULL);
        if (r == NULL) {
            Py_XDECREF(batch);
            return NULL;
        }
        Py_DECREF(r);
    } else {
        batch = PyList_New(want);
        if (batch == NULL)
            return NULL;
        for (Py_ssize_t k = 0; k < want; k++) {
            PyObject *kn = call_method(&m_popleft, dq, NULL);
            if (kn == NULL) {
                Py_DECREF(batch);
                return NULL;
            }
            PyList_SET_ITEM(batch, k, kn);
        }
    }
    long parked = 0;
    for (Py_ssize_t k = 0; k < want; k++) {
        PyObject *kn = PyList_GET_ITEM(batch, k);
        if (!Py_IS_TYPE(kn, knote_type)) {
            Py_DECREF(batch);
            PyErr_SetString(PyExc_TypeError, "take_batch(): not a Knote");
            return NULL;
        }
        /* ``parked`` first, then ``queued_on`` (a release store): a thread holding only
         * the knote lock may queue it on another kevq as soon as it reads None, and that
         * kevq's push may park it.  Cleared the other way round, this loop would count
         * that new kevq's flag off this kevq's ``nparked`` (one too low here, one too
         * high there: a lost wake-up). */
        if (SLOT(kn, koff[K_PARKED]) == Py_True) {
            Py_XSETREF(SLOT(kn, koff[K_PARKED]), Py_NewRef(Py_False));
            parked++;
        }
        PyObject *was = SLOT(kn, koff[K_QUEUED]);
        __atomic_store_n(&SLOT(kn, koff[K_QUEUED]), Py_NewRef(Py_None), __ATOMIC_RELEASE);
        Py_XDECREF(was);
    }
    *parked_out = parked;
    return batch;
}

static PyObject *
take_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || knote_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "take_batch(dq, want, q) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t want = PyLong_AsSsize_t(args[1]);
    if (want < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "take_batch(): negative count");
        return NULL;
    }
    long parked = 0;
    PyObject *batch = take_batch_impl(args[0], want, args[2], &parked);
    if (batch == NULL)
        return NULL;
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
static long
requeue_impl(PyObject *dq, PyObject *lst, PyObject *q)
{
    long parked = 0;
    Py_ssize_t n = PyList_GET_SIZE(lst), all = 0;
    while (all < n && Py_IS_TYPE(PyList_GET_ITEM(lst, all), knote_type) &&
           SLOT(PyList_GET_ITEM(lst, all), koff[K_QUEUED]) == q)
        all++;
    if (all == n && n > 1) {
        /* Every one still claimed (the usual case): one extend. */
        PyObject *r = call_method(&m_extend, dq, lst);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    else
        all = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *kn = PyList_GET_ITEM(lst, k);
        if (!Py_IS_TYPE(kn, knote_type)) {
            PyErr_SetString(PyExc_TypeError, "requeue(): not a Knote");
            return -1;
        }
        if (SLOT(kn, koff[K_QUEUED]) != q)
            continue;
        if (!all) {
            PyObject *r = call_method(&m_append, dq, kn);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
        }
        /* The owner alone decides (py_requeue says why).  It is only compared, never
         * dereferenced: the caller does not hold the knote lock, and the status int
         * that an owner's release replaces (set_status, under that lock only) could be
         * freed under a read of it. */
        PyObject *ow = SLOT_PEEK(kn, koff[K_OWNER]);
        if (ow != Py_None && ow != q) {
            Py_XSETREF(SLOT(kn, koff[K_PARKED]), Py_NewRef(Py_True));
            parked++;
        }
    }
    return parked;
}

static PyObject *
requeue(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || knote_type == NULL || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "requeue(dq, knotes: list, q)");
        return NULL;
    }
    long parked = requeue_impl(args[0], args[1], args[2]);
    return parked < 0 ? NULL : PyLong_FromLong(parked);
}

/* =======================================================================================
 * fast_control: the common kqueue.control() call, whole, in C
 * =======================================================================================
 *
 * fast_control(core, max_events, timeout) -> list | None
 *
 * KqueueCore.control(None, max_events, timeout) -- control, scan, _release_owned,
 * harvest_nowait, _collect in _kqueue.py, which are the reference -- for a call that
 * finds its events at once.  Python runs only where a filter needs it (a knote deliver_impl
 * does not take goes to KqueueCore._scan_knote) or where the state is unusual (a parked
 * knote to release, a thread asleep to wake, a pollable descriptor to settle: the same
 * KqueueCore methods the Python path calls, called from here at the same point).
 *
 * It returns None, having changed nothing, when the call is not its business: a closed or
 * forked kqueue, a bad argument (the Python path raises), max_events 0, a thread without
 * a kevq or whose kevq is not active yet or is closing, a topology (CPU/QUEUE policies
 * migrate kevqs), a log_threshold, an event class without its lazy twin yet.  It also
 * returns None when the scan found nothing and the call must wait or steal (a timeout
 * other than 0, or work stealing): the Python path then starts over, which repeats only
 * what is harmless to repeat (entering the estimator twice is a no-op; the owned knotes
 * are released already; a second non-blocking harvest; a scan of what is there).
 *
 * The arithmetic of the estimator, the batch limits and the scan order are twins of
 * sched's (Estimator.enter/leave, ewma, batch_limits, ScanOrder), exported below for the
 * tests that check them against the Python reference.
 *
 * Locks: knote fields are read and written under the knote's lock, kevq queue state under
 * the kevq's lock, as in _kqueue.py (lock order knote -> kevq).  The fields Python reads
 * and writes without a lock (flags such as closed/scanning, the estimator, the counters)
 * go through slot_ref/slot_put/set_flag, which a free-threaded build makes atomic.
 */
#include <sys/epoll.h>

enum { C_CLOSED, C_FORKS, C_MULTI, C_SINGLE, C_TLS, C_TKEY, C_TOPO, C_POLLABLE, C_GONE,
       C_SLEEPERS, C_EVCLS, C_LAZYBASE, C_LAZYCLS, C_TFREQ, C_RTSHARE, C_USED, C_ACTIVE,
       C_BACKEND, C_TUNABLES, C_WS, C_N };
enum { Q_LOCK, Q_RT, Q_NORMAL, Q_OWNED, Q_NPARKED, Q_INFLUX, Q_FLUXWAIT, Q_CLOSING,
       Q_ACTIVE, Q_NFOLLOWERS, Q_LEADERW, Q_COND, Q_SCANNING, Q_WAKEFD, Q_EST, Q_TSYSCALL,
       Q_TEVENTS, Q_TREALTIME, Q_N };
enum { B_LEADER, B_EPFD, B_CLOSED, B_BUSY, B_N };
enum { T_LOG_THRESHOLD, T_RT_STEAL, T_N };
static Py_ssize_t coff[C_N], qoff[Q_N], boff[B_N], toff[T_N], tsoff[1];
static PyTypeObject *core_type = NULL, *kevq_type = NULL,
                    *backend_type = NULL, *tslot_type = NULL, *tun_type = NULL;
static PyObject *forks_list = NULL;
/* The small ints 0 and -1 (CPython keeps one object each): a slot holding one of them
 * is read by identity, without a conversion (the usual log_threshold, tfreq, wake_fd). */
static PyObject *int_zero = NULL, *int_minus_one = NULL;
static PyObject *str_slot, *str_scan_knote, *str_unpark, *str_enqueue, *str_signal_ready,
                *str_steal_rt, *str_promote, *str_reap_gone, *str_settle_pending,
                *str_settle_wake, *str_dispatch, *str_poke, *str_notify, *str_notify_all,
                *str_appendleft, *str_harvest_nowait, *str_kevq_cache;
static method_cache m_appendleft = {&str_appendleft, NULL, NULL};

/* -- slots Python changes without a lock ---------------------------------------------- */
#ifdef Py_GIL_DISABLED
/* The member descriptor's own protocol: a read that cannot meet a freed object, a swap
 * under the object's critical section. */
static PyObject *
slot_ref(PyObject *o, Py_ssize_t off)
{
    PyMemberDef d = {"slot", T_OBJECT_EX, off, 0, NULL};
    return PyMember_GetOne((const char *)o, &d);
}

static int
slot_put(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyMemberDef d = {"slot", T_OBJECT_EX, off, 0, NULL};
    return PyMember_SetOne((char *)o, &d, v);
}

/* True and False are immortal: no reference counting. */
static inline void
set_flag(PyObject *o, Py_ssize_t off, int v)
{
    __atomic_store_n(&SLOT(o, off), v ? Py_True : Py_False, __ATOMIC_RELEASE);
}
#else
static inline PyObject *
slot_ref(PyObject *o, Py_ssize_t off)
{
    PyObject *v = SLOT(o, off);
    if (v == NULL)
        PyErr_SetString(PyExc_AttributeError, "slot not set");
    return Py_XNewRef(v);
}

static inline int
slot_put(PyObject *o, Py_ssize_t off, PyObject *v)
{
    Py_XSETREF(SLOT(o, off), Py_NewRef(v));
    return 0;
}

static inline void
set_flag(PyObject *o, Py_ssize_t off, int v)
{
    Py_XSETREF(SLOT(o, off), Py_NewRef(v ? Py_True : Py_False));
}
#endif

/* An int slot as a C long long; -1 (error cleared) if it is not an int or too big. */
static int
slot_ll(PyObject *o, Py_ssize_t off, long long *v)
{
    PyObject *x = slot_ref(o, off);
    if (x == NULL) {
        PyErr_Clear();
        return -1;
    }
    int overflow = 0;
    *v = PyLong_Check(x) ? PyLong_AsLongLongAndOverflow(x, &overflow) : -1;
    int bad = !PyLong_Check(x) || overflow || (*v == -1 && PyErr_Occurred());
    Py_DECREF(x);
    if (bad) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* The truth of a slot (True/False by identity): 1, 0, or -1 with an error. */
static int
slot_truth(PyObject *o, Py_ssize_t off)
{
    PyObject *v = SLOT_PEEK(o, off);
    if (v == Py_True || v == Py_False)
        return v == Py_True;
    if ((v = slot_ref(o, off)) == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static int
slot_put_ll(PyObject *o, Py_ssize_t off, long long v)
{
    PyObject *x = PyLong_FromLongLong(v);
    if (x == NULL)
        return -1;
    int r = slot_put(o, off, x);
    Py_DECREF(x);
    return r;
}

/* A field under a lock the caller holds: read in place. */
static inline long
locked_long(PyObject *o, Py_ssize_t off)
{
    PyObject *x = SLOT(o, off);
    return x == NULL ? -1 : PyLong_AsLong(x);
}

static PyObject *
call_core(PyObject *name, PyObject *core, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {core, a, b};
    size_t n = a == NULL ? 1 : b == NULL ? 2 : 3;
    return PyObject_VectorcallMethod(name, args, n, NULL);
}

static int
call_core_void(PyObject *name, PyObject *core, PyObject *a, PyObject *b)
{
    PyObject *r = call_core(name, core, a, b);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* -- twins of sched's arithmetic (estimator.py, policy.py) ---------------------------- */

/*
 * Estimator: sched.estimator.Estimator's twin for the runtime's kevqs (the simulator keeps
 * the Python class).  Same fields, methods and results, with the fields in 64-bit
 * integers (nanoseconds and event counts; a result beyond 64 bits saturates, where Python
 * grows: years of uptime away), read and written atomically (relaxed) since the kevq's
 * thread writes them while other threads' policies read them (exp_lat), as in Python.
 * fast_control updates it without a method call.
 */
enum { F_AVG_LAT, F_LAST_KEV, F_LAST_NKEV, F_TOTAL_TIME, F_AVG_EVENTS, F_AVG_RTLIMIT, F_N };
typedef struct {
    PyObject_HEAD
    long long f[F_N];
    int in_kernel;
} EstObject;

static PyTypeObject EstType;

#define EGET(e, i) __atomic_load_n(&(e)->f[i], __ATOMIC_RELAXED)
#define ESET(e, i, v) __atomic_store_n(&(e)->f[i], (v), __ATOMIC_RELAXED)
#define EKERNEL(e) __atomic_load_n(&(e)->in_kernel, __ATOMIC_RELAXED)

static inline long long
sat128(__int128 v)
{
    return v > LLONG_MAX ? LLONG_MAX : v < LLONG_MIN ? LLONG_MIN : (long long)v;
}

/* ewma over 128 bits (floor division, as Python's //), saturated. */
static inline long long
ewma128(long long old, long long new)
{
    if (old == 0)
        return new;
    const long long lim = 1LL << 56;   /* 95*old + 5*new fits in 64 bits: no 128-bit division */
    if (old > -lim && old < lim && new > -lim && new < lim) {
        long long v = 95 * old + 5 * new, q = v / 100;
        return v % 100 != 0 && v < 0 ? q - 1 : q;
    }
    __int128 v = (__int128)95 * old + (__int128)5 * new;
    __int128 q = v / 100;
    if (v % 100 != 0 && v < 0)
        q -= 1;
    return sat128(q);
}

/* Estimator.enter(now): a sample if the thread was in user space after a call that
 * returned events; then in the kernel.  last_nkev is read once (another thread's leave
 * may store 0 meanwhile). */
static void
est_enter_fast(EstObject *e, long long now)
{
    long long nkev = EGET(e, F_LAST_NKEV);
    if (!EKERNEL(e) && nkev > 0) {
        __int128 dt = (__int128)now - EGET(e, F_LAST_KEV);
        if (dt < 0)
            dt = 0;
        ESET(e, F_TOTAL_TIME, sat128(EGET(e, F_TOTAL_TIME) + dt));
        long long sample = dt <= LLONG_MAX ? (long long)dt / nkev : sat128(dt / nkev);
        ESET(e, F_AVG_LAT, ewma128(EGET(e, F_AVG_LAT), sample));
    }
    __atomic_store_n(&e->in_kernel, 1, __ATOMIC_RELAXED);
}

static void
est_leave_fast(EstObject *e, long long now, long long nevents)
{
    ESET(e, F_LAST_KEV, now);
    ESET(e, F_LAST_NKEV, nevents);
    __atomic_store_n(&e->in_kernel, 0, __ATOMIC_RELAXED);
    ESET(e, F_AVG_EVENTS, ewma128(EGET(e, F_AVG_EVENTS), nevents));
}

static void
est_note_rtlimit_fast(EstObject *e, long long rtlimit)
{
    ESET(e, F_AVG_RTLIMIT, ewma128(EGET(e, F_AVG_RTLIMIT), rtlimit));
}

/* An exact int from 128 bits. */
static PyObject *
long_from128(__int128 v)
{
    if (v >= LLONG_MIN && v <= LLONG_MAX)
        return PyLong_FromLongLong((long long)v);
    PyObject *hi = PyLong_FromLongLong((long long)(v >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)v);
    PyObject *sh = PyLong_FromLong(64), *r = NULL;
    if (hi != NULL && lo != NULL && sh != NULL) {
        PyObject *t = PyNumber_Lshift(hi, sh);
        if (t != NULL) {
            r = PyNumber_Or(t, lo);
            Py_DECREF(t);
        }
    }
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(sh);
    return r;
}

static int
ll_arg(PyObject *o, long long *v)
{
    *v = PyLong_AsLongLong(o);
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *
Est_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Estimator() takes no arguments");
        return NULL;
    }
    EstObject *e = (EstObject *)type->tp_alloc(type, 0);
    if (e != NULL)
        e->in_kernel = 1;   /* fresh: in the kernel, no history (sched's Estimator) */
    return (PyObject *)e;
}

/* A method of one int argument: fn(e, the argument as a C long long). */
static PyObject *
est_apply(EstObject *e, PyObject *arg, void (*fn)(EstObject *, long long))
{
    long long v;
    if (ll_arg(arg, &v) < 0)
        return NULL;
    fn(e, v);
    Py_RETURN_NONE;
}

static PyObject *
Est_enter(EstObject *e, PyObject *now)
{
    return est_apply(e, now, est_enter_fast);
}

/* Two int arguments as C long longs (``usage`` names them in the TypeError). */
static int
two_ll(const char *usage, PyObject *const *args, Py_ssize_t nargs, long long *a, long long *b)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s takes 2 arguments", usage);
        return -1;
    }
    return ll_arg(args[0], a) < 0 || ll_arg(args[1], b) < 0 ? -1 : 0;
}

static PyObject *
Est_leave(EstObject *e, PyObject *const *args, Py_ssize_t nargs)
{
    long long t, n;
    if (two_ll("leave(now, nevents)", args, nargs, &t, &n) < 0)
        return NULL;
    est_leave_fast(e, t, n);
    Py_RETURN_NONE;
}

static PyObject *
Est_note_rtlimit(EstObject *e, PyObject *rtlimit)
{
    return est_apply(e, rtlimit, est_note_rtlimit_fast);
}

/* start(now): now in the kernel, else max(last_kev, now - last_nkev * avg_lat). */
static __int128
est_start(EstObject *e, long long now, long long nkev, long long lat)
{
    if (EKERNEL(e))
        return now;
    __int128 clamp = (__int128)now - (__int128)nkev * lat;
    long long last = EGET(e, F_LAST_KEV);
    return clamp > last ? clamp : last;
}

static PyObject *
Est_start(EstObject *e, PyObject *now)
{
    long long t;
    if (ll_arg(now, &t) < 0)
        return NULL;
    return long_from128(est_start(e, t, EGET(e, F_LAST_NKEV), EGET(e, F_AVG_LAT)));
}

/* exp_lat(now, total_queued): avg_lat * (total_queued + last_nkev) + start(now), from one
 * snapshot of avg_lat and last_nkev. */
static PyObject *
Est_exp_lat(EstObject *e, PyObject *const *args, Py_ssize_t nargs)
{
    long long t, queued;
    if (two_ll("exp_lat(now, total_queued)", args, nargs, &t, &queued) < 0)
        return NULL;
    long long nkev = EGET(e, F_LAST_NKEV), lat = EGET(e, F_AVG_LAT);
    __int128 n = (__int128)queued + nkev;
    /* |lat * n| < 2^126 and |start| < 2^65: no overflow in 128 bits */
    return long_from128((__int128)lat * n + est_start(e, t, nkev, lat));
}

static PyObject *
Est_as_dict(EstObject *e, PyObject *unused)
{
    long long v[F_N];
    for (int k = 0; k < F_N; k++)
        v[k] = EGET(e, k);
    return Py_BuildValue("{sLsLsLsOsLsLsL}", "avg_latency", v[F_AVG_LAT], "last_kev",
                         v[F_LAST_KEV], "last_nkev", v[F_LAST_NKEV], "in_kernel",
                         EKERNEL(e) ? Py_True : Py_False, "total_time", v[F_TOTAL_TIME],
                         "avg_events", v[F_AVG_EVENTS], "avg_rtlimit", v[F_AVG_RTLIMIT]);
}

static PyObject *
Est_repr(EstObject *e)
{
    return PyUnicode_FromFormat("Estimator(avg_lat=%lld, last_kev=%lld, last_nkev=%lld, "
                                "in_kernel=%s)", EGET(e, F_AVG_LAT), EGET(e, F_LAST_KEV),
                                EGET(e, F_LAST_NKEV), EKERNEL(e) ? "True" : "False");
}

static PyObject *
Est_get(EstObject *e, void *k)
{
    return PyLong_FromLongLong(EGET(e, (int)(intptr_t)k));
}

static int
Est_set(EstObject *e, PyObject *v, void *k)
{
    long long x;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete an estimator field");
        return -1;
    }
    if (ll_arg(v, &x) < 0)
        return -1;
    ESET(e, (int)(intptr_t)k, x);
    return 0;
}

static PyObject *
Est_get_kernel(EstObject *e, void *unused)
{
    return PyBool_FromLong(EKERNEL(e));
}

static int
Est_set_kernel(EstObject *e, PyObject *v, void *unused)
{
    int b = v == NULL ? -1 : PyObject_IsTrue(v);
    if (b < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "cannot delete in_kernel");
        return -1;
    }
    __atomic_store_n(&e->in_kernel, b, __ATOMIC_RELAXED);
    return 0;
}

static PyGetSetDef Est_getset[] = {
    {"avg_lat", (getter)Est_get, (setter)Est_set, NULL, (void *)(intptr_t)F_AVG_LAT},
    {"last_kev", (getter)Est_get, (setter)Est_set, NULL, (void *)(intptr_t)F_LAST_KEV},
    {"last_nkev", (getter)Est_get, (setter)Est_set, NULL, (void *)(intptr_t)F_LAST_NKEV},
    {"total_time", (getter)Est_get, (setter)Est_set, NULL, (void *)(intptr_t)F_TOTAL_TIME},
    {"avg_events", (getter)Est_get, (setter)Est_set, NULL, (void *)(intptr_t)F_AVG_EVENTS},
    {"avg_rtlimit", (getter)Est_get, (setter)Est_set, NULL, (void *)(intptr_t)F_AVG_RTLIMIT},
    {"in_kernel", (getter)Est_get_kernel, (setter)Est_set_kernel, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Est_methods[] = {
    {"enter", (PyCFunction)Est_enter, METH_O, "enter(now): the thread re-enters control()"},
    {"leave", (PyCFunction)(void (*)(void))Est_leave, METH_FASTCALL,
     "leave(now, nevents): the scan returns nevents events"},
    {"note_rtlimit", (PyCFunction)Est_note_rtlimit, METH_O,
     "note_rtlimit(rtlimit): avg_rtlimit = ewma(avg_rtlimit, rtlimit)"},
    {"start", (PyCFunction)Est_start, METH_O, "start(now): when this kevq could start"},
    {"exp_lat", (PyCFunction)(void (*)(void))Est_exp_lat, METH_FASTCALL,
     "exp_lat(now, total_queued): expected completion timestamp (ns)"},
    {"as_dict", (PyCFunction)Est_as_dict, METH_NOARGS, "the dump fields"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EstType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "skqueue._speedups.Estimator",
    .tp_basicsize = sizeof(EstObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "sched.estimator.Estimator's twin (64-bit fields), for the runtime's kevqs.",
    .tp_methods = Est_methods,
    .tp_getset = Est_getset,
    .tp_new = Est_new,
    .tp_repr = (reprfunc)Est_repr,
};

/* estimator_type() -> the Estimator twin type (readied on first use; _scan.py asks). */
static PyObject *
estimator_type(PyObject *self, PyObject *unused)
{
    if (PyType_Ready(&EstType) < 0)
        return NULL;
    return Py_NewRef((PyObject *)&EstType);
}

/* batch_limits(maxev, multi, tfreq, rtshare, avg_lat) -> (maxev, rtlimit). */
static void
batch_limits_c(long long maxev, int multi, long long tfreq, long long rtshare,
               long long avg_lat, long long *maxev_out, long long *rtlimit_out)
{
    if (multi && tfreq > 0 && avg_lat > 0) {
        __int128 per = (__int128)avg_lat * tfreq;
        __int128 cap = (__int128)1000000000 / per;
        if (cap < 1)
            cap = 1;
        if (cap < maxev)
            maxev = (long long)cap;
    }
    long long rtlimit = 0;
    if (rtshare > 0 && maxev > 0) {
        __int128 v = ((__int128)maxev * rtshare + 99) / 100;
        rtlimit = sat128(v);
    }
    *maxev_out = maxev;
    *rtlimit_out = rtlimit;
}

/* ScanOrder (policy.py): the runs of one scan. */
typedef struct {
    long long maxev, rtlimit, taken, taken_rt, rt_left, normal_left;
} scan_order;

static inline void
so_init(scan_order *o, long long n_rt, long long n_normal, long long maxev, long long rtlimit)
{
    o->maxev = maxev;
    o->rtlimit = rtlimit;
    o->taken = o->taken_rt = 0;
    o->rt_left = n_rt;
    o->normal_left = n_normal;
}

static inline long long
min3(long long a, long long b, long long c)
{
    long long m = a < b ? a : b;
    return m < c ? m : c;
}

static inline long long
so_next_run(const scan_order *o, int *from_rt)
{
    long long room = o->maxev - o->taken;
    *from_rt = 0;
    if (room <= 0)
        return 0;
    if (o->rt_left) {
        long long share = o->rtlimit - o->taken_rt;
        if (share > 0) {
            *from_rt = 1;
            return min3(room, share, o->rt_left);
        }
        if (!o->normal_left) {
            *from_rt = 1;
            return room < o->rt_left ? room : o->rt_left;
        }
    }
    return room < o->normal_left ? room : o->normal_left;
}

static inline void
so_took(scan_order *o, int from_rt, long long asked, long long popped, long long delivered)
{
    if (from_rt) {
        o->rt_left = popped == asked ? o->rt_left - popped : 0;
        o->taken_rt += delivered;
    } else
        o->normal_left = popped == asked ? o->normal_left - popped : 0;
    o->taken += delivered;
}

/* -- locks --------------------------------------------------------------------------- */

#define kn_lock(kn) lock_op(SLOT(kn, koff[K_LOCK]), 1)
#define kn_unlock(kn) lock_op(SLOT(kn, koff[K_LOCK]), 0)
#define kn_unlock_err(kn) unlock_err(SLOT(kn, koff[K_LOCK]))
#define q_lock(q) lock_op(SLOT(q, qoff[Q_LOCK]), 1)
#define q_unlock(q) lock_op(SLOT(q, qoff[Q_LOCK]), 0)
#define q_unlock_err(q) unlock_err(SLOT(q, qoff[Q_LOCK]))

static int
set_long(PyObject *o, Py_ssize_t off, long v)
{
    PyObject *x = PyLong_FromLong(v);
    if (x == NULL)
        return -1;
    Py_XSETREF(SLOT(o, off), x);
    return 0;
}

/* Kevq.push(kn, head) (caller holds the kevq lock and the knote lock). */
static int
kevq_push(PyObject *q, PyObject *kn, int head)
{
    PyObject *dq = SLOT(q, SLOT(kn, koff[K_RT]) == Py_True ? qoff[Q_RT] : qoff[Q_NORMAL]);
    PyObject *r = call_method(head ? &m_appendleft : &m_append, dq, kn);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    Py_XSETREF(SLOT(kn, koff[K_QUEUED]), Py_NewRef(q));
    long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
    if (st == -1 && PyErr_Occurred())
        return -1;
    if (st & KN_PROCESSING && SLOT(kn, koff[K_OWNER]) != q) {
        Py_XSETREF(SLOT(kn, koff[K_PARKED]), Py_NewRef(Py_True));
        return set_long(q, qoff[Q_NPARKED], locked_long(q, qoff[Q_NPARKED]) + 1);
    }
    return 0;
}

/* -- the pieces of a scan ----------------------------------------------------------- */

/* q's thread has an available event: the pollable descriptors say so (_signal_ready). */
static int
signal_ready(PyObject *core, PyObject *q)
{
    long long wfd;
    if (SLOT_PEEK(core, coff[C_POLLABLE]) == Py_False &&
        (SLOT_PEEK(q, qoff[Q_WAKEFD]) == int_minus_one ||
         (slot_ll(q, qoff[Q_WAKEFD], &wfd) == 0 && wfd < 0)))
        return 0;
    return call_core_void(str_signal_ready, core, q, NULL);
}

/* The first half of _release_owned for one knote (caller holds its lock): q's thread no
 * longer owns it; a knote parked elsewhere is unparked there.  1 if it is a
 * level-triggered leftover to put back at the head of q, 0 if not, -1 on error. */
static int
release_locked(PyObject *core, PyObject *q, PyObject *kn)
{
    long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
    if (st == -1 && PyErr_Occurred())
        return -1;
    if (SLOT(kn, koff[K_OWNER]) == q) {
        st &= ~KN_PROCESSING;
        if (set_status(kn, st) < 0)
            return -1;
        Py_XSETREF(SLOT(kn, koff[K_OWNER]), Py_NewRef(Py_None));
    }
    if (st & (KN_DETACHED | KN_PROCESSING))
        return 0;
    PyObject *qq = SLOT_PEEK(kn, koff[K_QUEUED]);
    if (qq != Py_None)
        return qq != q && call_core_void(str_unpark, core, qq, kn) < 0 ? -1 : 0;
    long fl = PyLong_AsLong(SLOT(kn, koff[K_FLAGS]));
    if (fl == -1 && PyErr_Occurred())
        return -1;
    return !(fl & EV_CLEAR_F) && !(st & KN_DISABLED);
}

/* The second half (caller holds the knote's lock): back to the head of q if it is still
 * unqueued and live -- _enqueue(q, kn, head=True): nobody sleeps on q while its own
 * thread scans, so no wake-up, unless the state says otherwise: then the Python
 * _enqueue decides. */
static int
requeue_head_locked(PyObject *core, PyObject *q, PyObject *kn)
{
    long st = PyLong_AsLong(SLOT(kn, koff[K_STATUS]));
    if (st == -1 && PyErr_Occurred())
        return -1;
    if (SLOT_PEEK(kn, koff[K_QUEUED]) != Py_None || st & (KN_DETACHED | KN_PROCESSING))
        return 0;
    if (q_lock(q) < 0)
        return -1;
    if (SLOT(q, qoff[Q_CLOSING]) != Py_False || locked_long(q, qoff[Q_NFOLLOWERS]) ||
        SLOT(q, qoff[Q_LEADERW]) != Py_False) {
        if (q_unlock(q) < 0)
            return -1;
        PyObject *args[4] = {core, q, kn, Py_True};   /* _enqueue(q, kn, True): the head */
        PyObject *r = PyObject_VectorcallMethod(str_enqueue, args, 4, NULL);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    if (kevq_push(q, kn, 1) < 0) {
        q_unlock_err(q);
        return -1;
    }
    return q_unlock(q) < 0 ? -1 : signal_ready(core, q);
}

/* KqueueCore._release_owned(q): the knotes q's thread was handed last time are released;
 * level-triggered ones still ready go back to the head of q, in order (all released
 * first, then put back in reverse; a single knote in one pass under its lock). */
#define OWNED_STACK 16
static int
release_owned_c(PyObject *core, PyObject *q)
{
    PyObject *owned = slot_ref(q, qoff[Q_OWNED]);
    if (owned == NULL)
        return -1;
    Py_ssize_t n = PyList_CheckExact(owned) ? PyList_GET_SIZE(owned) : 0;
    PyObject *stack[OWNED_STACK], **kns = stack;
    char back_stack[OWNED_STACK], *back = back_stack;
    int rc = 0;
    if (n > OWNED_STACK) {
        kns = PyMem_Malloc(n * sizeof(PyObject *));
        back = PyMem_Malloc(n);
        if (kns == NULL || back == NULL) {
            PyMem_Free(kns);
            PyMem_Free(back);
            Py_DECREF(owned);
            PyErr_NoMemory();
            return -1;
        }
    }
    /* Taken off the list (q.owned, which this scan fills again), as the Python path's
     * ``owned, q.owned = q.owned, []``. */
    for (Py_ssize_t k = 0; k < n; k++)
        kns[k] = Py_NewRef(PyList_GET_ITEM(owned, k));
    if (n > 0 && PyList_SetSlice(owned, 0, n, NULL) < 0)
        rc = -1;   /* the loops below do nothing; the references are still dropped */
    for (Py_ssize_t k = 0; rc == 0 && k < n; k++) {
        if (!Py_IS_TYPE(kns[k], knote_type)) {
            PyErr_SetString(PyExc_TypeError, "owned: not a Knote");
            rc = -1;
        } else if (kn_lock(kns[k]) < 0)
            rc = -1;
        else {
            int r = release_locked(core, q, kns[k]);
            back[k] = r == 1;
            if (r == 1 && n == 1)
                r = requeue_head_locked(core, q, kns[k]);
            if (r < 0) {
                kn_unlock_err(kns[k]);
                rc = -1;
            } else if (kn_unlock(kns[k]) < 0)
                rc = -1;
        }
    }
    for (Py_ssize_t k = n - 1; rc == 0 && n > 1 && k >= 0; k--) {
        if (!back[k])
            continue;
        if (kn_lock(kns[k]) < 0)
            rc = -1;
        else if (requeue_head_locked(core, q, kns[k]) < 0) {
            kn_unlock_err(kns[k]);
            rc = -1;
        } else if (kn_unlock(kns[k]) < 0)
            rc = -1;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        Py_DECREF(kns[k]);
    if (kns != stack) {
        PyMem_Free(kns);
        PyMem_Free(back);
    }
    Py_DECREF(owned);
    return rc;
}

/* Hand what one epoll_wait(0) returned to Backend.dispatch (the caller is the leader);
 * the backend remembers whether it found anything (``busy``). */
#define HARVEST_MAX 1024
static int
harvest_c(PyObject *b)
{
    long epfd = PyLong_AsLong(SLOT(b, boff[B_EPFD]));
    static __thread struct epoll_event evs[HARVEST_MAX];
    int n = epfd < 0 ? -1 : epoll_wait((int)epfd, evs, HARVEST_MAX, 0);
    if (n < 0)
        PyErr_Clear();   /* EINTR, or closed: as an empty harvest */
    set_flag(b, boff[B_BUSY], n > 0);
    if (n <= 0)
        return 0;
    PyObject *lst = PyList_New(n);
    if (lst == NULL)
        return -1;
    for (int k = 0; k < n; k++) {
        PyObject *t = Py_BuildValue("(iI)", evs[k].data.fd, (unsigned)evs[k].events);
        if (t == NULL) {
            Py_DECREF(lst);
            return -1;
        }
        PyList_SET_ITEM(lst, k, t);
    }
    PyObject *args[2] = {b, lst};
    PyObject *r = PyObject_VectorcallMethod(str_dispatch, args, 2, NULL);
    Py_DECREF(lst);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The first run the scan will pop (ScanOrder's first next_run over q as it is now): its
 * leading candidates for deliver_impl, with their pollfds, in ``pre``. */
static int
peek(PyObject *q, long long maxev, long long rtlimit, recheck *pre)
{
    PyObject *got[RUN_MAX];
    Py_ssize_t k = 0;
    if (q_lock(q) < 0)
        return -1;
    PyObject *rtq = SLOT(q, qoff[Q_RT]), *nq = SLOT(q, qoff[Q_NORMAL]);
    scan_order o;
    int from_rt;
    so_init(&o, Py_SIZE(rtq), Py_SIZE(nq), maxev, rtlimit);
    long long want = so_next_run(&o, &from_rt);
    PyObject *dq = from_rt ? rtq : nq;
    for (; k < want && k < RUN_MAX && k < Py_SIZE(dq); k++) {
        got[k] = PySequence_GetItem(dq, k);   /* a new reference (deque_item) */
        if (got[k] == NULL)
            break;
    }
    if (PyErr_Occurred()) {
        q_unlock_err(q);
        goto fail;
    }
    if (q_unlock(q) < 0)
        goto fail;
    /* Outside the kevq lock.  A free-threaded build reads the knote under its lock, only
     * tried: the peek is an optimisation and never waits (a busy knote ends it). */
    int stop = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *w;
        int fd;
        if (!stop && candidate(got[j], &w, &fd, &pre->turns[pre->n], 1)) {
            pre->kn[pre->n] = got[j];
            pre->pf[pre->n].fd = fd;
            pre->pf[pre->n].events = POLLIN | POLLRDHUP;
            pre->pf[pre->n].revents = 0;
            pre->n++;
        } else {
            stop = 1;
            Py_DECREF(got[j]);
        }
    }
    return 0;
fail:
    while (k > 0)
        Py_DECREF(got[--k]);
    return -1;
}

static void
recheck_clear(recheck *pre)
{
    while (pre->n > 0)
        Py_DECREF(pre->kn[--pre->n]);
    pre->polled = pre->trusted = 0;
}

/* KqueueCore.harvest_nowait() for a scan of q: if no thread is the leader, take what the
 * backend's epoll holds (Backend.dispatch), as the Python path does first.
 *
 * One system call instead of two where it can: unless the last harvest found something,
 * the scan's first run is peeked (``pre``) and one poll(2) re-checks its descriptors and
 * asks the epoll descriptor whether epoll_wait would return anything (it polls readable
 * exactly then); only if it would, epoll_wait runs.  Either way the harvest comes before
 * the scan takes its markers, as in the Python path, so what it activates is scanned. */
static int
harvest_and_peek(PyObject *core, PyObject *q, long long maxev, long long rtlimit,
                 recheck *pre)
{
    PyObject *b = SLOT(core, coff[C_BACKEND]);
    PyObject *leader = SLOT(b, boff[B_LEADER]);
    if (!Py_IS_TYPE(leader, &LockType))
        return call_core_void(str_harvest_nowait, core, NULL, NULL);
    int busy = SLOT_PEEK(b, boff[B_BUSY]) == Py_True;
    if (!busy && peek(q, maxev, rtlimit, pre) < 0)
        return -1;
    LockObject *l = (LockObject *)leader;
    int led = PyThread_acquire_lock(l->lk, NOWAIT_LOCK);   /* else: the leader harvests */
    if (led)
        atomic_store_explicit(&l->held, 1, memory_order_relaxed);
    /* Holding the leader lock keeps close() from closing the epoll under us. */
    int open = led && SLOT_PEEK(core, coff[C_CLOSED]) == Py_False &&
               SLOT_PEEK(b, boff[B_CLOSED]) == Py_False;
    int harvest = open && (busy || pre->n == 0);
    if (!harvest && pre->n > 0) {
        int nfds = pre->n;
        if (open) {
            long epfd = PyLong_AsLong(SLOT(b, boff[B_EPFD]));
            pre->pf[nfds].fd = (int)epfd;
            pre->pf[nfds].events = POLLIN;
            pre->pf[nfds].revents = 0;
            nfds++;
        }
        int rc;
        do {
            rc = poll(pre->pf, (nfds_t)nfds, 0);
        } while (rc < 0 && errno == EINTR);
        pre->polled = rc >= 0;
        pre->trusted = 1;
        harvest = open && (rc < 0 || pre->pf[pre->n].revents);
    }
    int r = 0;
    if (harvest) {
        pre->trusted = 0;   /* its callbacks may change what makes a candidate */
        r = harvest_c(b);
    }
    if (led) {
        if (r < 0)
            unlock_err(leader);
        else
            lock_release_fast(l);
    }
    return r;
}

/* A deque's length read without its kevq's lock: a hint (its size field, atomically). */
static inline Py_ssize_t
deque_len_hint(PyObject *dq)
{
    return __atomic_load_n(&((PyVarObject *)dq)->ob_size, __ATOMIC_RELAXED);
}

/* The rt_steal pre-check of scan: does another active kevq hold realtime entries? (an
 * unlocked hint; KqueueCore._steal_rt checks properly) */
static int
other_rt(PyObject *core, PyObject *q)
{
    PyObject *active = slot_ref(core, coff[C_ACTIVE]);
    if (active == NULL)
        return -1;
    int found = 0;
    if (PyTuple_CheckExact(active)) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(active) && !found; k++) {
            PyObject *v = PyTuple_GET_ITEM(active, k);
            if (v == q || !Py_IS_TYPE(v, kevq_type))
                continue;
            found = deque_len_hint(SLOT(v, qoff[Q_RT])) > 0;
        }
    } else
        found = 1;   /* not the tuple it always is: let Python look */
    Py_DECREF(active);
    return found;
}

/* KqueueCore._collect(q, maxev, rtlimit, out): see there. */
static int
collect_c(PyObject *core, PyObject *q, long long maxev, long long rtlimit, PyObject *out,
          int multi, PyObject *cls, PyTypeObject *lazy, recheck *pre)
{
    PyObject *rtq = SLOT(q, qoff[Q_RT]), *nq = SLOT(q, qoff[Q_NORMAL]);
    PyObject *owned = NULL, *req_rt = NULL, *req_norm = NULL, *batch = NULL;
    if (q_lock(q) < 0)
        return -1;
    Py_ssize_t n_rt = Py_SIZE(rtq), n_normal = Py_SIZE(nq);
    if (n_rt + n_normal == 0)
        return q_unlock(q);
    int locked = 1;
    long popped = 0;
    scan_order ord;
    so_init(&ord, n_rt, n_normal, maxev - PyList_GET_SIZE(out), rtlimit);
    owned = slot_ref(q, qoff[Q_OWNED]);
    if (owned == NULL)
        goto fail;
    for (;;) {
        int from_rt;
        long long want = so_next_run(&ord, &from_rt);
        if (!want)
            break;
        if (!locked && q_lock(q) < 0)
            goto fail;
        locked = 1;
        long parked = 0;
        batch = take_batch_impl(from_rt ? rtq : nq, (Py_ssize_t)want, q, &parked);
        if (batch == NULL)
            goto fail;
        Py_ssize_t nb = PyList_GET_SIZE(batch);
        if ((parked && set_long(q, qoff[Q_NPARKED], locked_long(q, qoff[Q_NPARKED]) - parked) < 0) ||
            (!multi && set_long(q, qoff[Q_INFLUX], locked_long(q, qoff[Q_INFLUX]) + nb) < 0))
            goto fail;
        if (!multi)
            popped += nb;
        locked = 0;
        if (q_unlock(q) < 0)
            goto fail;
        Py_ssize_t before = PyList_GET_SIZE(out);
        Py_ssize_t i = 0;
        while (i < nb) {
            i = deliver_impl(batch, i, lazy, q, out, &req_rt, &req_norm, owned, multi, pre);
            if (i < 0)
                goto fail;
            if (i < nb) {
                /* (The requeue lists are made when needed: for the Python call, now.) */
                if ((req_rt == NULL && (req_rt = PyList_New(0)) == NULL) ||
                    (req_norm == NULL && (req_norm = PyList_New(0)) == NULL))
                    goto fail;
                PyObject *args[9] = {core, PyList_GET_ITEM(batch, i), q, cls, out, req_rt,
                                     req_norm, owned, multi ? Py_True : Py_False};
                PyObject *r = PyObject_VectorcallMethod(str_scan_knote, args, 9, NULL);
                if (r == NULL)
                    goto fail;
                Py_DECREF(r);
                i++;
            }
        }
        so_took(&ord, from_rt, want, nb, PyList_GET_SIZE(out) - before);
        Py_CLEAR(batch);
    }
    if (locked) {
        locked = 0;
        if (q_unlock(q) < 0)
            goto fail;
    }
    if (ord.taken_rt) {
        long long tr;
        if (slot_ll(q, qoff[Q_TREALTIME], &tr) < 0 ||
            slot_put_ll(q, qoff[Q_TREALTIME], tr + ord.taken_rt) < 0)
            goto fail;
    }
    if ((req_rt != NULL && PyList_GET_SIZE(req_rt)) ||
        (req_norm != NULL && PyList_GET_SIZE(req_norm)) || popped) {
        if (q_lock(q) < 0)
            goto fail;
        long pr = req_rt == NULL ? 0 : requeue_impl(rtq, req_rt, q);
        long pn = pr < 0 ? -1 : req_norm == NULL ? 0 : requeue_impl(nq, req_norm, q);
        int poke = 0;
        if (pn < 0 || ((pr || pn) &&
                       set_long(q, qoff[Q_NPARKED], locked_long(q, qoff[Q_NPARKED]) + pr + pn) < 0)) {
            q_unlock_err(q);
            goto fail;
        }
        if (popped) {
            /* Legacy: a waiter that found only entries in flux sleeps until they are
             * settled (KQ_FLUXWAIT): wake it (_wake_locked). */
            if (set_long(q, qoff[Q_INFLUX], locked_long(q, qoff[Q_INFLUX]) - popped) < 0) {
                q_unlock_err(q);
                goto fail;
            }
            if (SLOT(q, qoff[Q_FLUXWAIT]) == Py_True) {
                Py_XSETREF(SLOT(q, qoff[Q_FLUXWAIT]), Py_NewRef(Py_False));
                if (locked_long(q, qoff[Q_NFOLLOWERS]) > 0) {
                    PyObject *args[1] = {SLOT(q, qoff[Q_COND])};
                    PyObject *r = PyObject_VectorcallMethod(multi ? str_notify : str_notify_all,
                                                            args, 1, NULL);
                    if (r == NULL) {
                        q_unlock_err(q);
                        goto fail;
                    }
                    Py_DECREF(r);
                }
                poke = SLOT(q, qoff[Q_LEADERW]) == Py_True;
            }
        }
        if (q_unlock(q) < 0)
            goto fail;
        if (poke) {
            PyObject *args[1] = {SLOT(core, coff[C_BACKEND])};
            PyObject *r = PyObject_VectorcallMethod(str_poke, args, 1, NULL);
            if (r == NULL)
                goto fail;
            Py_DECREF(r);
        }
    }
    Py_DECREF(owned);
    Py_XDECREF(req_rt);
    Py_XDECREF(req_norm);
    return 0;
fail:
    if (locked)
        q_unlock_err(q);
    Py_XDECREF(batch);
    Py_XDECREF(owned);
    Py_XDECREF(req_rt);
    Py_XDECREF(req_norm);
    return -1;
}

/* The calling thread's kevq in multi mode (_tls.slot.kevq), or NULL (no error) if it has
 * none yet: KqueueCore.my_kevq creates it.
 *
 * The last one found is remembered in the thread state's dict, ONE entry per thread:
 * (the kqueue's ``_tkey``, a weak reference to the kevq).  ``_tkey`` is an object that
 * holds nothing, so the entry keeps neither the kqueue nor the kevq alive, it goes with
 * the thread, and a thread that uses many kqueues in turn holds one entry, not one per
 * kqueue.  A miss, a kevq that is gone or closing (detached), or another kqueue's entry
 * is looked up again in the threading.local, the reference. */
static PyObject *
thread_kevq(PyObject *core)
{
    PyObject *key = SLOT(core, coff[C_TKEY]), *entry = NULL, *q = NULL;
    PyObject *d = PyThreadState_GetDict();   /* this thread's: no other thread uses it */
    if (d != NULL) {
        if (dict_get_ref(d, str_kevq_cache, &entry) < 0)
            return NULL;
        if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2 &&
            PyTuple_GET_ITEM(entry, 0) == key && PyWeakref_CheckRef(PyTuple_GET_ITEM(entry, 1))) {
#if PY_VERSION_HEX >= 0x030D0000
            if (PyWeakref_GetRef(PyTuple_GET_ITEM(entry, 1), &q) < 0)
                PyErr_Clear();
#else
            q = Py_NewRef(PyWeakref_GET_OBJECT(PyTuple_GET_ITEM(entry, 1)));
#endif
        }
        Py_XDECREF(entry);
        if (q != NULL && Py_IS_TYPE(q, kevq_type) && SLOT_PEEK(q, qoff[Q_CLOSING]) == Py_False)
            return q;
        Py_CLEAR(q);
    }
    PyObject *slot = PyObject_GetAttr(SLOT(core, coff[C_TLS]), str_slot);
    if (slot == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError))
            PyErr_Clear();
        return NULL;
    }
    if (Py_IS_TYPE(slot, tslot_type))
        q = Py_XNewRef(SLOT(slot, tsoff[0]));
    Py_DECREF(slot);
    if (q != NULL && !Py_IS_TYPE(q, kevq_type))
        Py_CLEAR(q);
    if (q != NULL && d != NULL) {
        PyObject *ref = PyWeakref_NewRef(q, NULL);
        entry = ref == NULL ? NULL : PyTuple_Pack(2, key, ref);
        Py_XDECREF(ref);
        if (entry == NULL || PyDict_SetItem(d, str_kevq_cache, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(q);
            return NULL;
        }
        Py_DECREF(entry);
    }
    return q;
}

static PyObject *
fast_control_impl(PyObject *core, PyObject *max_events, PyObject *to)
{
    if (!Py_IS_TYPE(core, core_type) || !PyLong_CheckExact(max_events))
        Py_RETURN_NONE;
    int overflow;
    long long maxev = PyLong_AsLongLongAndOverflow(max_events, &overflow);
    if (overflow || maxev < 1)
        Py_RETURN_NONE;
    int poll_only;
    if (to == Py_None)
        poll_only = 0;
    else {
        double t = PyFloat_CheckExact(to) ? PyFloat_AS_DOUBLE(to)
                   : PyLong_CheckExact(to) ? PyLong_AsDouble(to) : -1.0;
        if (!(t >= 0)) {   /* NaN, negative, too big, another type: Python decides */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        poll_only = t == 0;
    }
    /* The kqueue, the thread's kevq: anything unusual is the Python path's. */
    if (SLOT_PEEK(core, coff[C_CLOSED]) != Py_False || SLOT_PEEK(core, coff[C_TOPO]) != Py_None)
        Py_RETURN_NONE;
    if (PyLong_AsLong(SLOT(core, coff[C_FORKS])) != PyLong_AsLong(PyList_GET_ITEM(forks_list, 0))) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int multi = SLOT_PEEK(core, coff[C_MULTI]) == Py_True;
    PyObject *q = multi ? thread_kevq(core) : Py_NewRef(SLOT(core, coff[C_SINGLE]));
    if (q == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *cls = NULL, *lazy = NULL, *out = NULL;
    long long log_threshold = 1, rt_steal = 0;
    recheck pre;
    pre.n = pre.polled = pre.trusted = 0;
    PyObject *tun = SLOT(core, coff[C_TUNABLES]);
    if (SLOT_PEEK(q, qoff[Q_ACTIVE]) != Py_True || SLOT_PEEK(q, qoff[Q_CLOSING]) != Py_False ||
        !Py_IS_TYPE(SLOT(q, qoff[Q_EST]), &EstType) ||
        !Py_IS_TYPE(tun, tun_type) ||
        (SLOT_PEEK(tun, toff[T_LOG_THRESHOLD]) != int_zero &&
         (slot_ll(tun, toff[T_LOG_THRESHOLD], &log_threshold) < 0 || log_threshold != 0)))
        goto python;
    cls = slot_ref(core, coff[C_EVCLS]);
    if (cls == NULL)
        goto fail;
    if (SLOT_PEEK(core, coff[C_LAZYBASE]) != cls)
        goto python;   /* the first scan with this class makes its lazy twin */
    lazy = slot_ref(core, coff[C_LAZYCLS]);
    if (lazy == NULL)
        goto fail;
    if (!PyType_Check(lazy) || !is_lazy((PyTypeObject *)lazy))
        goto python;

    /* control(): the estimator, the mode is fixed from now on. */
    EstObject *est = (EstObject *)SLOT(q, qoff[Q_EST]);
    est_enter_fast(est, now_ns());
    if (SLOT_PEEK(core, coff[C_USED]) != Py_True)
        set_flag(core, coff[C_USED], 1);

    /* scan(): owned knotes released, the batch limits. */
    if (multi) {
        set_flag(q, qoff[Q_SCANNING], 1);   /* thieves leave this kevq alone */
        if (release_owned_c(core, q) < 0)
            goto fail;
    }
    long long tfreq = 0, rtshare = 0, avg_lat = 0;
    if (multi && SLOT_PEEK(core, coff[C_TFREQ]) != int_zero &&
        slot_ll(core, coff[C_TFREQ], &tfreq) < 0)
        tfreq = 0;
    if (slot_ll(core, coff[C_RTSHARE], &rtshare) < 0)
        rtshare = 100;
    avg_lat = EGET(est, F_AVG_LAT);
    long long rtlimit;
    batch_limits_c(maxev, multi, tfreq, rtshare, avg_lat, &maxev, &rtlimit);
    if (SLOT_PEEK(core, coff[C_CLOSED]) != Py_False) {
        if (multi)
            set_flag(q, qoff[Q_SCANNING], 0);
        PyObject *e = Py_BuildValue("(is)", EBADF, "kqueue closed while waiting");
        if (e != NULL) {
            PyErr_SetObject(PyExc_OSError, e);
            Py_DECREF(e);
        }
        goto fail;
    }
    if (harvest_and_peek(core, q, maxev, rtlimit, &pre) < 0)
        goto fail;
    if (multi && rtlimit && deque_len_hint(SLOT(q, qoff[Q_RT])) == 0 &&
        (rt_steal = slot_truth(tun, toff[T_RT_STEAL])) != 0) {
        if (rt_steal < 0)
            goto fail;
        int o = other_rt(core, q);
        if (o < 0 || (o && call_core_void(str_steal_rt, core, q, NULL) < 0))
            goto fail;
    }
    if (multi)
        set_flag(q, qoff[Q_SCANNING], 1);
    out = PyList_New(0);
    if (out == NULL || collect_c(core, q, maxev, rtlimit, out, multi, cls,
                                 (PyTypeObject *)lazy, &pre) < 0)
        goto fail;
    recheck_clear(&pre);
    if (multi)
        set_flag(q, qoff[Q_SCANNING], 0);
    Py_ssize_t n = PyList_GET_SIZE(out);
    if (n == 0 && (!poll_only || SLOT_PEEK(core, coff[C_WS]) == Py_True))
        goto python;   /* wait or steal: the Python path starts over */

    /* The end of scan(): leader vacancy, the estimator, counters, settling. */
    PyObject *sleepers = SLOT(core, coff[C_SLEEPERS]);
    PyObject *leader = SLOT(SLOT(core, coff[C_BACKEND]), boff[B_LEADER]);
    if (PySet_Size(sleepers) > 0 &&
        !(Py_IS_TYPE(leader, &LockType) &&
          atomic_load_explicit(&((LockObject *)leader)->held, memory_order_relaxed)) &&
        call_core_void(str_promote, core, NULL, NULL) < 0)
        goto fail;
    long long tot;
    est_leave_fast(est, now_ns(), n);
    est_note_rtlimit_fast(est, rtlimit);
    if (slot_ll(q, qoff[Q_TSYSCALL], &tot) == 0 && slot_put_ll(q, qoff[Q_TSYSCALL], tot + 1) < 0)
        goto fail;
    if (slot_ll(q, qoff[Q_TEVENTS], &tot) == 0 && slot_put_ll(q, qoff[Q_TEVENTS], tot + n) < 0)
        goto fail;
    PyObject *gone = slot_ref(core, coff[C_GONE]);
    if (gone == NULL)
        goto fail;
    int any_gone = PyList_Check(gone) && PyList_GET_SIZE(gone) > 0;
    Py_DECREF(gone);
    if (any_gone && call_core_void(str_reap_gone, core, NULL, NULL) < 0)
        goto fail;
    if (SLOT_PEEK(core, coff[C_POLLABLE]) != Py_False &&
        call_core_void(str_settle_pending, core, NULL, NULL) < 0)
        goto fail;
    long long wfd;
    if (SLOT_PEEK(q, qoff[Q_WAKEFD]) != int_minus_one &&
        slot_ll(q, qoff[Q_WAKEFD], &wfd) == 0 && wfd >= 0 &&
        call_core_void(str_settle_wake, core, q, NULL) < 0)
        goto fail;
    Py_DECREF(q);
    Py_DECREF(cls);
    Py_DECREF(lazy);
    return out;
python:
    recheck_clear(&pre);
    Py_DECREF(q);
    Py_XDECREF(cls);
    Py_XDECREF(lazy);
    Py_XDECREF(out);
    Py_RETURN_NONE;
fail:
    recheck_clear(&pre);
    if (multi && q != NULL)
        set_flag(q, qoff[Q_SCANNING], 0);
    Py_XDECREF(q);
    Py_XDECREF(cls);
    Py_XDECREF(lazy);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *
fast_control(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || core_type == NULL || knote_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "fast_control(core, max_events, timeout): not bound");
        return NULL;
    }
    return fast_control_impl(args[0], args[1], args[2]);
}

/*
 * kqueue.control, run by C: bind_kqueue(kqueue, globals) puts this method on the class in
 * place of the Python one, which stays the reference and does everything this does not:
 * a call of the common form (no changes, positional arguments) whose _kqueue.fast_control
 * is the C one goes to fast_control_impl without the Python method's frame; anything
 * else, and a call fast_control leaves to Python, is the Python method's.
 */
static PyObject *kq_py_control = NULL, *kq_globals = NULL, *kq_fast = NULL;
static PyObject *str_fast_control = NULL;
static Py_ssize_t kq_core_off;

static PyObject *
kq_control(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames == NULL && (nargs == 2 || nargs == 3) &&
        (args[0] == Py_None || (PyList_CheckExact(args[0]) && PyList_GET_SIZE(args[0]) == 0))) {
        PyObject *fc;
        if (dict_get_ref(kq_globals, str_fast_control, &fc) < 0)
            return NULL;
        Py_XDECREF(fc);   /* compared by identity only; the module keeps kq_fast alive */
        PyObject *core = fc == kq_fast ? slot_ref(self, kq_core_off) : NULL;
        if (core == NULL && PyErr_Occurred())
            return NULL;
        if (core != NULL) {
            PyObject *r = core == Py_None ? Py_NewRef(Py_None)
                          : fast_control_impl(core, args[1], nargs == 3 ? args[2] : Py_None);
            Py_DECREF(core);
            if (r != Py_None)
                return r;
            Py_DECREF(r);
        }
    }
    Py_ssize_t n = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    if (n < 8) {
        PyObject *stack[8];
        stack[0] = self;
        for (Py_ssize_t k = 0; k < n; k++)
            stack[k + 1] = args[k];
        return PyObject_Vectorcall(kq_py_control, stack, nargs + 1, kwnames);
    }
    PyObject *bound = PyMethod_New(kq_py_control, self);
    if (bound == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(bound, args, nargs, kwnames);
    Py_DECREF(bound);
    return r;
}

static PyMethodDef kq_control_def = {
    "control", (PyCFunction)(void (*)(void))kq_control, METH_FASTCALL | METH_KEYWORDS, NULL,
};

/* bind_kqueue(kqueue, globals): kqueue.control becomes kq_control (its doc the Python
 * method's, with the signature). */
static PyObject *
bind_kqueue(PyObject *self, PyObject *args)
{
    PyObject *cls, *globals;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &cls, &PyDict_Type, &globals))
        return NULL;
    if (kq_py_control != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_kqueue(): already bound");
        return NULL;
    }
    static const char *names[1] = {"_core"};
    if (learn(cls, names, 1, &kq_core_off) < 0)
        return NULL;
    PyObject *py = PyObject_GetAttrString(cls, "control");
    PyObject *fast = PyObject_GetAttrString(self, "fast_control");
    PyObject *doc = py == NULL ? NULL : PyObject_GetAttrString(py, "__doc__");
    PyObject *full = doc == NULL || !PyUnicode_Check(doc) ? NULL
        : PyUnicode_FromFormat("control($self, changelist, max_events, timeout=None)\n--\n\n%U",
                               doc);
    const char *utf8 = full == NULL ? NULL : PyUnicode_AsUTF8(full);
    char *keep = utf8 == NULL ? NULL : PyMem_RawMalloc(strlen(utf8) + 1);   /* for good */
    str_fast_control = str_fast_control ? str_fast_control
                                        : PyUnicode_InternFromString("fast_control");
    PyObject *descr = NULL;
    if (keep != NULL && fast != NULL && str_fast_control != NULL) {
        strcpy(keep, utf8);
        kq_control_def.ml_doc = keep;
        descr = PyDescr_NewMethod((PyTypeObject *)cls, &kq_control_def);
    } else if (keep == NULL && utf8 != NULL)
        PyErr_NoMemory();
    Py_XDECREF(doc);
    Py_XDECREF(full);
    if (descr == NULL || PyObject_SetAttrString(cls, "control", descr) < 0) {
        Py_XDECREF(descr);
        Py_XDECREF(py);
        Py_XDECREF(fast);
        return NULL;
    }
    Py_DECREF(descr);
    kq_py_control = py;   /* owned for good */
    kq_fast = fast;
    kq_globals = Py_NewRef(globals);
    Py_RETURN_NONE;
}

/* bind_core(KqueueCore, Kevq, Backend, _ThreadSlot, Tunables, forks) */
static PyObject *
bind_core(PyObject *self, PyObject *args)
{
    static const char *c_names[C_N] = {"closed", "_forks", "multi", "single", "_tls", "_tkey",
                                       "topo", "pollable", "_gone", "_sleepers", "event_cls",
                                       "_lazy_base", "_lazy_cls", "tfreq", "rtshare", "used",
                                       "active", "backend", "tunables", "_ws"};
    static const char *q_names[Q_N] = {"lock", "rt", "normal", "owned", "nparked", "influx",
                                       "fluxwait", "closing", "active", "nfollowers",
                                       "leader_waiting", "cond", "scanning", "wake_fd", "est",
                                       "total_syscall", "total_events", "total_realtime"};
    static const char *b_names[B_N] = {"leader", "epfd", "closed", "busy"};
    static const char *t_names[T_N] = {"log_threshold", "rt_steal"};
    static const char *ts_names[1] = {"kevq"};
    PyObject *c, *q, *b, *ts, *t, *forks;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!", &PyType_Type, &c, &PyType_Type, &q,
                          &PyType_Type, &b, &PyType_Type, &ts, &PyType_Type, &t,
                          &PyList_Type, &forks))
        return NULL;
    if (PyList_GET_SIZE(forks) != 1) {
        PyErr_SetString(PyExc_ValueError, "bind_core(): the fork counter is a 1-item list");
        return NULL;
    }
    if (learn(c, c_names, C_N, coff) < 0 || learn(q, q_names, Q_N, qoff) < 0 ||
        learn(b, b_names, B_N, boff) < 0 ||
        learn(t, t_names, T_N, toff) < 0 || learn(ts, ts_names, 1, tsoff) < 0)
        return NULL;
    static const struct { PyObject **s; const char *v; } strs[] = {
        {&str_slot, "slot"}, {&str_scan_knote, "_scan_knote"}, {&str_unpark, "_unpark"},
        {&str_enqueue, "_enqueue"}, {&str_signal_ready, "_signal_ready"},
        {&str_steal_rt, "_steal_rt"}, {&str_promote, "_promote"},
        {&str_reap_gone, "_reap_gone"}, {&str_settle_pending, "_settle_pending"},
        {&str_settle_wake, "_settle_wake"}, {&str_dispatch, "dispatch"}, {&str_poke, "poke"},
        {&str_notify, "notify"}, {&str_notify_all, "notify_all"},
        {&str_appendleft, "appendleft"},
        {&str_harvest_nowait, "harvest_nowait"}, {&str_kevq_cache, "skqueue.kevq"},
    };
    for (size_t k = 0; k < sizeof strs / sizeof strs[0]; k++)
        if (*strs[k].s == NULL && (*strs[k].s = PyUnicode_InternFromString(strs[k].v)) == NULL)
            return NULL;
    Py_XSETREF(kevq_type, (PyTypeObject *)Py_NewRef(q));
    Py_XSETREF(backend_type, (PyTypeObject *)Py_NewRef(b));
    Py_XSETREF(tslot_type, (PyTypeObject *)Py_NewRef(ts));
    Py_XSETREF(tun_type, (PyTypeObject *)Py_NewRef(t));
    Py_XSETREF(forks_list, Py_NewRef(forks));
    if (int_zero == NULL && ((int_zero = PyLong_FromLong(0)) == NULL ||
                             (int_minus_one = PyLong_FromLong(-1)) == NULL))
        return NULL;
    Py_XSETREF(core_type, (PyTypeObject *)Py_NewRef(c));   /* last: fast_control's "bound" */
    Py_RETURN_NONE;
}

/* -- the twins, for the tests that compare them with sched's Python -------------------- */

/* An int argument as a C long long, saturated (the twins' callers pass small values;
 * beyond a long long the results cannot differ: see batch_limits_c). */
static long long
sat_ll(PyObject *o)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : v;
}

static PyObject *
batch_limits(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "batch_limits(maxev, multi, tfreq, rtshare, avg_lat)");
        return NULL;
    }
    int multi = PyObject_IsTrue(args[1]);
    long long maxev = PyLong_AsLongLong(args[0]), tfreq = PyLong_AsLongLong(args[2]);
    long long rtshare = PyLong_AsLongLong(args[3]);
    long long avg_lat = PyLong_Check(args[4]) ? sat_ll(args[4]) : PyLong_AsLongLong(args[4]);
    if (multi < 0 || PyErr_Occurred())
        return NULL;
    long long m, r;
    batch_limits_c(maxev, multi, tfreq, rtshare, avg_lat, &m, &r);
    return Py_BuildValue("(LL)", m, r);
}

/* scan_order_runs(n_rt, n_normal, maxev, rtlimit, outcomes) -> (runs, taken, taken_rt)
 * The runs a scan asks for when the k-th run pops and delivers as outcomes[k] says
 * ((popped, delivered), each clamped to what was asked/popped): the C ScanOrder. */
static PyObject *
scan_order_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_order_runs(n_rt, n_normal, maxev, rtlimit, outcomes: list)");
        return NULL;
    }
    long long v[4];
    for (int k = 0; k < 4; k++) {
        v[k] = PyLong_AsLongLong(args[k]);
        if (v[k] == -1 && PyErr_Occurred())
            return NULL;
    }
    scan_order o;
    so_init(&o, v[0], v[1], v[2], v[3]);
    PyObject *runs = PyList_New(0);
    if (runs == NULL)
        return NULL;
    PyObject *oc = args[4];
    for (Py_ssize_t k = 0;; k++) {
        int from_rt;
        long long want = so_next_run(&o, &from_rt);
        if (!want || k >= PyList_GET_SIZE(oc))
            break;
        long long popped, delivered;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(oc, k), "LL", &popped, &delivered)) {
            Py_DECREF(runs);
            return NULL;
        }
        popped = popped < 0 ? 0 : popped > want ? want : popped;
        delivered = delivered < 0 ? 0 : delivered > popped ? popped : delivered;
        PyObject *t = Py_BuildValue("(OL)", from_rt ? Py_True : Py_False, want);
        if (t == NULL || PyList_Append(runs, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(runs);
            return NULL;
        }
        Py_DECREF(t);
        so_took(&o, from_rt, want, popped, delivered);
    }
    return Py_BuildValue("(NLL)", runs, o.taken, o.taken_rt);
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
    {"scan_pause", scan_pause, METH_O,
     "scan_pause(us): tests only, a sleep between a scan's poll(2) and its knote locks"},
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
    {"bind_core", (PyCFunction)bind_core, METH_VARARGS,
     "bind_core(KqueueCore, Kevq, Backend, _ThreadSlot, Tunables, forks)"},
    {"fast_control", (PyCFunction)(void (*)(void))fast_control, METH_FASTCALL,
     "fast_control(core, max_events, timeout) -> list | None: the common control() call"},
    {"bind_kqueue", (PyCFunction)bind_kqueue, METH_VARARGS,
     "bind_kqueue(kqueue, globals): kqueue.control runs fast_control without a frame"},
    {"estimator_type", (PyCFunction)estimator_type, METH_NOARGS,
     "estimator_type() -> type: sched's Estimator's twin, for the runtime's kevqs"},
    {"batch_limits", (PyCFunction)(void (*)(void))batch_limits, METH_FASTCALL,
     "batch_limits(maxev, multi, tfreq, rtshare, avg_lat): sched.batch_limits's twin"},
    {"scan_order_runs", (PyCFunction)(void (*)(void))scan_order_runs, METH_FASTCALL,
     "scan_order_runs(n_rt, n_normal, maxev, rtlimit, outcomes): sched.ScanOrder's twin"},
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
